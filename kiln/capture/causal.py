"""Decoder LMs as one step graph with an explicit KV cache.

``forward(input_ids, attention_mask, position_ids, *past) -> {logits, present.<i>.key|value}``: the same graph
runs the prefill (past empty) and every decode step (sequence 1), so one capture serves every
target, and each target picks the cache form its runtime does best (explicit inputs and outputs
for ONNX Runtime and AOTInductor, internal state for OpenVINO).

The cache is handed to transformers as a ``DynamicCache`` whose layers hold the given past
tensors directly: letting the cache concatenate onto its own empty start tensor puts a
zero-sized constant in the graph, which OpenVINO rejects.

``attention_mask`` ``[batch, past + sequence]`` (1 for a token, 0 for padding) lets rows of
different lengths share a batch (left-padded), as OpenVINO GenAI and ONNX Runtime GenAI feed it;
the batch is then dynamic (1..8 unless ``[model].dims.batch`` says otherwise). kiln builds the 4-D
mask itself (:func:`padded_causal`) and runs attention through its own function
(:func:`kiln_attention`), so only a model on sdpa attention whose layers all see the whole past
gets the mask input; one on eager attention or with sliding windows keeps transformers' own mask
and batch 1 (``CacheSpec.attention_mask`` says which), as does a factory's own step module.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.capture.loaded import LoadedModel
from kiln.config import DimSpec, InputSpec, ModelConfig
from kiln.errors import SourceError
from kiln.spec import CacheSpec, Signature

# Tokens the capture is traced with: a dim traced at 0 or 1 is specialized to a constant.
EXAMPLE_SEQUENCE, EXAMPLE_PAST = 4, 8
DEFAULT_CONTEXT = 256
DEFAULT_BATCH = 8
MASK = "attention_mask"
MASK_LENGTH = "past+sequence"  # a sum of two dims (kiln.spec.SUM)
ATTENTION = "kiln_sdpa"  # the name kiln's attention function is registered under in transformers


def kiln_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    """transformers' sdpa attention, pinned for export: always the mask given (kiln's padded causal
    mask), and grouped-query keys and values widened right at the attention as ``unsqueeze(2) ->
    expand -> reshape``, the pattern OpenVINO's SDPA-to-paged-attention transformation reads the
    KV-head count from (it then drops the widening: the paged cache holds KV heads). transformers'
    own sdpa function gives the same graph today (its ``repeat_kv``), but passes
    ``enable_gqa=True`` instead where it decides so (``TRANSFORMERS_SDPA_FORCE_GQA=1``, other
    devices): OpenVINO 2026.4's PyTorch frontend drops that flag and the conversion fails ("Key
    input shape not compatible with other inputs"), so the widening is kiln's."""
    import torch

    scaling = kwargs.get("scaling")  # dropout (0 in eval) and is_causal (the mask says it) are not read
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:
        batch, heads, length, width = key.shape
        key = key.unsqueeze(2).expand(batch, heads, groups, length, width).reshape(batch, heads * groups, length, width)
        value = (
            value.unsqueeze(2).expand(batch, heads, groups, length, width).reshape(batch, heads * groups, length, width)
        )
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def use_kiln_attention(model: Any) -> bool:
    """Switch a transformers model on sdpa attention to :func:`kiln_attention` (registered once);
    whether it was switched (a model on eager attention keeps it)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(ATTENTION, kiln_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)
    return True


def cache_spec(config: Any) -> CacheSpec:
    """The cache layout of a transformers causal LM, from its config."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not (heads and layers and hidden):
        raise SourceError(f"{type(config).__name__}: cannot read the layer, head and width counts of this model")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None) or 2048
    eos = getattr(text, "eos_token_id", None)
    vocab = int(text.vocab_size)

    def token(value: Any) -> int | None:
        value = value[0] if isinstance(value, list | tuple) and value else value
        return int(value) if isinstance(value, int) and 0 <= value < vocab else None

    return CacheSpec(
        layers=int(layers),
        kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=vocab,
        max_positions=int(positions),
        bos_token_id=token(getattr(text, "bos_token_id", None)),
        eos_token_id=token(eos),
    )


def step_signature(cache: CacheSpec, model: ModelConfig) -> Signature:
    """Inputs and dims of the step graph; ``[model].dims`` may set batch, sequence and past."""
    context = min(cache.max_positions, DEFAULT_CONTEXT)
    dims = {
        "batch": model.dims.get("batch", DimSpec(min=1, opt=1, max=DEFAULT_BATCH if cache.attention_mask else 1)),
        "sequence": model.dims.get("sequence", DimSpec(min=1, opt=min(64, context // 2), max=min(128, context))),
        "past": model.dims.get("past", DimSpec(min=0, opt=min(64, context // 2), max=context - 1)),
    }
    if dims["past"].max + 1 > cache.max_positions:
        raise SourceError(
            f"dims.past.max = {dims['past'].max} reaches past the model's {cache.max_positions} positions; "
            f"set [model].dims.past.max to at most {cache.max_positions - 1}"
        )
    for name in ("sequence", "past"):
        if dims[name].static:
            raise SourceError(f"dims.{name} must be a range (min < max): one step graph serves prefill and decode")
    ids = (0, cache.vocab_size - 1)
    inputs = [InputSpec(name="input_ids", shape=["batch", "sequence"], dtype="int64", range=ids)]
    if cache.attention_mask:  # seeded inputs get all ones: a row of zeros attends to nothing
        inputs.append(InputSpec(name=MASK, shape=["batch", MASK_LENGTH], dtype="int64", range=(1, 1)))
    inputs.append(
        InputSpec(name="position_ids", shape=["batch", "sequence"], dtype="int64", range=(0, dims["past"].max))
    )
    inputs += [
        InputSpec(name=name, shape=["batch", cache.kv_heads, "past", cache.head_dim], dtype="float32")
        for name in cache.past_names
    ]
    outputs = ("logits", *cache.present_names)
    return Signature(tuple(inputs), dims, outputs, cache)


def example_inputs(sig: Signature) -> tuple[Any, ...]:
    """A mid-sequence step (past 8, sequence 4; batch 2 when the batch is dynamic), the mask all ones."""
    import torch

    assert sig.cache is not None
    batch = 1 if sig.dims["batch"].static else min(2, sig.dims["batch"].max)
    seq = min(EXAMPLE_SEQUENCE, sig.dims["sequence"].max)
    past = min(EXAMPLE_PAST, sig.dims["past"].max)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, sig.cache.vocab_size, (batch, seq), generator=gen)
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    cache = sig.cache
    pasts = [torch.randn(batch, cache.kv_heads, past, cache.head_dim, generator=gen) for _ in cache.past_names]
    mask = (torch.ones(batch, past + seq, dtype=torch.int64),) if cache.attention_mask else ()
    return (ids, *mask, positions, *pasts)


def padded_causal(mask: Any, sequence: Any) -> Any:
    """``[batch, 1, sequence, past + sequence]`` bool: a query attends to the keys up to its own
    index that the 2-D ``mask`` keeps (rows left-padded); a query with no key to attend (a padded
    position's own row) attends to all, so its output stays finite (nothing reads it)."""
    import torch

    total = mask.shape[1]
    keys = torch.arange(total, device=mask.device)
    queries = torch.arange(sequence, device=mask.device) + (total - sequence)
    # Arithmetic, not bitwise ops: coremltools 9 converts no bitwise_or.
    kept = (keys[None, :] <= queries[:, None]).to(mask.dtype)[None, None] * mask[:, None, None, :]
    return kept + (kept.sum(dim=-1, keepdim=True) == 0).to(mask.dtype) > 0


def full_attention(config: Any) -> bool:
    """Whether every layer attends to the whole past (no sliding window): the mask kiln builds."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or ()
    window = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    return not window and all(t == "full_attention" for t in types)


def step_module(model: Any, cache: CacheSpec) -> Any:
    """The transformers model as the step graph ``(input_ids, attention_mask, position_ids, *past) ->
    dict`` (without ``attention_mask`` where the cache spec has none)."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    present_names = cache.present_names

    class CausalStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def step(self, input_ids: torch.Tensor, mask: Any, position_ids: torch.Tensor, past: tuple) -> dict:
            kv = DynamicCache()
            kv.layers = []
            for i in range(cache.layers):
                layer = DynamicLayer()
                key, value = past[2 * i], past[2 * i + 1]
                layer.dtype, layer.device = key.dtype, key.device
                layer.keys, layer.values, layer.is_initialized = key, value, True
                kv.layers.append(layer)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=kv,
                use_cache=True,
                return_dict=True,
            )
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return {"logits": out.logits, **dict(zip(present_names, present, strict=True))}

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor) -> dict:
            return self.step(input_ids, None, position_ids, past)

    class MaskedStep(CausalStep):
        # torch.export reads the inputs from the signature: the mask is a named parameter.
        def forward(  # type: ignore[override]
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
        ) -> dict:
            # The mask spans the past and this chunk: said as one equality, torch.export derives its
            # length from the two dims. The 4-D mask is built here, not by transformers: its padding
            # checks would bound the length from below by export's size assumptions (2 + 2) and
            # specialize a length of 1, and a one-token prefill would fail the graph's guards.
            torch._check(attention_mask.shape[1] == past[0].shape[2] + input_ids.shape[1])
            attention_mask = padded_causal(attention_mask, input_ids.shape[1])
            return self.step(input_ids, attention_mask, position_ids, past)

    return (MaskedStep() if cache.attention_mask else CausalStep()).eval()


def is_causal_lm(module: Any) -> bool:
    """A transformers model with a generation head, whatever its class is called."""
    can_generate = getattr(module, "can_generate", None)
    return callable(can_generate) and bool(can_generate()) and hasattr(module, "config")


def merge_adapter(model: Any, adapter: Path) -> Any:
    """Merge a PEFT adapter (LoRA, QLoRA's LoRA) into the base weights: the capture sees one model."""
    if not (adapter / "adapter_config.json").is_file():
        raise SourceError(
            f"adapter {adapter} has no adapter_config.json; point [model].adapter at a PEFT adapter folder"
        )
    try:
        from peft import PeftModel
    except ImportError as err:
        raise SourceError("[model].adapter needs peft; pip install 'kiln[hf]' -c constraints.txt") from err
    try:
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    except Exception as err:
        raise SourceError(f"adapter {adapter} does not fit the model ({type(err).__name__}: {err})") from err


def adapter_digest(adapter: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(adapter).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def causal_loaded(module: Any, model: ModelConfig, kind: Any, tokenizer_dir: Path | None) -> LoadedModel:
    """A transformers causal LM (its adapter merged; adapter paths arrive resolved) as a loaded
    step graph."""
    if len(model.adapters) > 1:
        raise SourceError("one adapter per model load; the build expands a list of adapters into one model each")
    for ref in model.adapters:
        module = merge_adapter(module, Path(ref))
    module = module.eval()
    if hasattr(module.config, "use_cache"):
        module.config.use_cache = True
    # The mask input where kiln builds the mask and attention reads it (sdpa, every layer full):
    # a model on eager attention or with sliding windows keeps transformers' own mask, batch 1.
    masked = full_attention(module.config) and use_kiln_attention(module)
    cache = replace(cache_spec(module.config), attention_mask=masked)
    sig = step_signature(cache, model)
    return LoadedModel(
        kind, sig, module=step_module(module, cache), example=example_inputs(sig), tokenizer=tokenizer_dir
    )


def load_causal_lm(folder: Path, model: ModelConfig, config: Any, tokenizer: Any) -> LoadedModel:
    """An ``hf:`` folder whose architecture maps to a causal LM head (``text-generation``), on
    sdpa attention, or on eager attention where transformers refuses sdpa for the architecture
    (Gemma2's logit softcapping): every artifact's manifest then notes it."""
    import transformers

    load = transformers.AutoModelForCausalLM.from_pretrained
    notes: tuple[str, ...] = ()
    try:
        try:
            hf_model = load(folder, attn_implementation="sdpa")
        except ValueError as err:
            if "scaled_dot_product_attention" not in str(err):  # transformers' words for refusing sdpa
                raise
            hf_model = load(folder, attn_implementation="eager")
            notes = (f"attention: eager (transformers refuses sdpa for {type(hf_model).__name__})",)
    except Exception as err:
        raise SourceError(f"hf:{folder} failed to load as a causal LM ({type(err).__name__}: {err})") from err
    del config, tokenizer  # the folder is the tokenizer's too; its files travel with the export
    return replace(causal_loaded(hf_model, model, "hf", folder), notes=notes)
