"""A causal LM in the form ExecuTorch's own LLM export gives it: a static KV cache in the program.

kiln's step graph (:mod:`kiln.capture.causal`) carries the cache as inputs and outputs whose
length grows every step; ExecuTorch plans memory for fixed upper bounds, and that graph aborted
the 1.5.1 runtime. ExecuTorch's LLM export instead keeps the cache inside the program as mutable
buffers of the full context, written in place, and that is what this module builds:

- the transformers model is re-created from the export's ``model_config.json`` and the captured
  program's weights (the exact weights every other target gets: adapters merged, GGUF dequantized);
- each attention layer owns two buffers ``[1, context, kv_heads, head_dim]``, updated in place by
  ``llama::update_cache`` and read by ``llama::custom_sdpa`` (causal from the start position, GQA
  inside the kernel), ExecuTorch's custom ops from ``executorch.extension.llm.custom_ops``; where
  that library does not load, the same buffers are written with ``index_copy_`` and read by plain
  SDPA under a position mask (the manifest says which);
- one method ``forward(tokens [1, seq], input_pos [seq]) -> logits [1, seq, vocab]``, ``seq``
  dynamic from 1 to the step graph's ``dims.sequence.max`` (prefill in chunks, then one token at a
  time), the context ``dims.past.max + 1``;
- the metadata methods ExecuTorch's LLM runner reads (``get_max_seq_len``, ``get_max_context_len``,
  ``get_vocab_size``, ``get_n_layers``, ``get_bos_id``, ``get_eos_ids``, ``use_kv_cache``,
  ``use_sdpa_with_kv_cache``, ``enable_dynamic_shape``), as ``export_llama`` writes them;
- lowered to XNNPACK; ``int4-dynamic`` is 8da4w (int4 weights in groups, int8 activations per token
  at run time: torchao's ``Int8DynamicActivationIntxWeightConfig``), ``int8-dynamic`` 8da8w.

The ``.pte`` and ``tokenizer.json`` sit side by side in the artifact folder: what ExecuTorch's
``TextLLMRunner`` (``llama_main``) loads. kiln decodes it through :class:`PteSession`.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from kiln.decoding import DecodeSession, Tokenizer
from kiln.errors import ConfigError, TargetBuildError, error_line
from kiln.spec import Arrays, Signature
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions
from kiln.targets.executorch.options import ExecuTorchOptions

MAIN = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
# The attention implementations registered with transformers (one name per kind: a registration is global).
ATTENTION = {True: "kiln_executorch_custom_sdpa", False: "kiln_executorch_plain_sdpa"}
GROUPS = (128, 64, 32)  # 8da4w group sizes tried, largest first, when options.group_size is unset


def custom_ops_error() -> str | None:
    """``None`` when ExecuTorch's LLM custom ops (AOT library and runtime kernels) load here, else why not."""
    try:
        import torch
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama::*)

        torch.ops.llama.custom_sdpa.default  # noqa: B018
        torch.ops.llama.update_cache.default  # noqa: B018
    except Exception as err:  # the library asserts and raises plain errors when its .so is missing
        return error_line(err)
    return None


class _Position:
    """The start position and positions of the call being traced, shared by every attention layer."""

    start: Any = None
    positions: Any = None


def _attend_custom(module: Any, query: Any, key: Any, value: Any, *_: Any, **kwargs: Any) -> Any:
    """transformers attention (``[batch, heads, seq, dim]`` in) over the layer's static cache:
    ``update_cache`` writes the new keys and values at the start position, ``custom_sdpa``
    attends causally up to it. Returns ``[batch, seq, heads, dim]`` as transformers expects."""
    import torch

    scaling = kwargs.get("scaling")
    start = module.kiln_position.start
    key, value = key.transpose(1, 2), value.transpose(1, 2)
    torch.ops.llama.update_cache(key, module.k_cache, start)
    torch.ops.llama.update_cache(value, module.v_cache, start)
    out = torch.ops.llama.custom_sdpa(
        query.transpose(1, 2), module.k_cache, module.v_cache, start, None, 0.0, True, scaling
    )
    return out, None


def _attend_plain(module: Any, query: Any, key: Any, value: Any, *_: Any, **kwargs: Any) -> Any:
    """The same cache without the custom ops: ``index_copy_`` and SDPA under a position mask."""
    import torch
    import torch.nn.functional as F

    scaling = kwargs.get("scaling")
    positions = module.kiln_position.positions
    module.k_cache.index_copy_(1, positions, key.transpose(1, 2))
    module.v_cache.index_copy_(1, positions, value.transpose(1, 2))
    keys, values = module.k_cache.transpose(1, 2), module.v_cache.transpose(1, 2)
    repeat = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
    mask = torch.arange(keys.shape[2])[None, :] <= positions[:, None]
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2), None


def static_module(lm: Any, sig: Signature, custom: bool) -> Any:
    """``lm`` (a transformers causal LM) wrapped as ``forward(tokens, input_pos) -> logits`` with a
    static cache of the signature's context in every attention layer."""
    import torch
    from transformers import AttentionInterface

    cache = sig.cache
    assert cache is not None
    context = sig.context_length()
    if custom and (unavailable := custom_ops_error()) is not None:
        raise TargetBuildError(f"executorch: ExecuTorch's LLM custom ops did not load ({unavailable})")
    AttentionInterface.register(ATTENTION[custom], _attend_custom if custom else _attend_plain)
    try:
        lm.set_attn_implementation(ATTENTION[custom])
    except Exception as err:
        raise TargetBuildError(
            f"executorch: {type(lm).__name__} takes no registered attention implementation ({error_line(err)}); "
            "this architecture cannot use ExecuTorch's static cache: build onnxruntime or openvino"
        ) from err
    position = _Position()
    layers = [m for m in lm.modules() if hasattr(m, "layer_idx") and hasattr(m, "scaling")]
    if len(layers) != cache.layers:
        raise TargetBuildError(
            f"executorch: found {len(layers)} attention layers in {type(lm).__name__}, expected {cache.layers}; "
            "this architecture cannot use ExecuTorch's static cache: build onnxruntime or openvino"
        )
    for layer in layers:
        shape = (1, context, cache.kv_heads, cache.head_dim)
        layer.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        layer.register_buffer("v_cache", torch.zeros(shape), persistent=False)
        layer.kiln_position = position

    class StaticCacheLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            start = input_pos[0].item()
            torch._check(start >= 0)
            torch._check(start + tokens.shape[1] <= context)
            position.start, position.positions = start, input_pos
            out = self.lm(
                input_ids=tokens,
                position_ids=input_pos[None],
                cache_position=input_pos,
                use_cache=False,
                return_dict=True,
            )
            return out.logits

    return StaticCacheLM().eval()


def rebuild(ctx: CompileContext) -> Any:
    """The transformers model from the export's config and the captured program's weights."""
    import json

    import torch
    import transformers

    path = ctx.export.model_config
    if path is None:
        raise TargetBuildError(
            "executorch: this causal LM's export has no model_config.json (a Python source whose model kiln does "
            "not hold as a transformers model, or an export made before kiln wrote it); build from an hf: or gguf: "
            "source, or delete the build folder's export/ and build again"
        )
    data = json.loads(path.read_text())
    config = transformers.AutoConfig.for_model(**data)
    with torch.random.fork_rng(devices=[]):
        lm = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    program = ctx.export.program()
    weights = {name.removeprefix("model."): t for name, t in program.state_dict.items()}
    weights.update({name.removeprefix("model."): t for name, t in program.constants.items() if hasattr(t, "shape")})
    own = lm.state_dict()
    try:
        missing, _ = lm.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    except RuntimeError as err:
        raise TargetBuildError(
            f"executorch: the captured weights do not fit {type(lm).__name__} re-made from its config "
            f"({error_line(err)}); a pruned variant cannot be rebuilt: build executorch from the dense export"
        ) from err
    tied = set(getattr(lm, "_tied_weights_keys", None) or ())  # a dict (transformers 5) or a list: the names
    missing = [k for k in missing if k not in tied and not k.endswith(("inv_freq", "original_inv_freq"))]
    if missing:
        raise TargetBuildError(
            f"executorch: the captured program holds no weight for {', '.join(missing[:3])}; report this"
        )
    return lm


def group_for(lm: Any, given: int | None) -> int:
    """The 8da4w group: the option, else the largest of 128, 64, 32 that divides every Linear's input width."""
    import torch

    if given is not None:
        return given
    widths = {m.in_features for m in lm.modules() if isinstance(m, torch.nn.Linear)}
    return next((g for g in GROUPS if all(w % g == 0 for w in widths)), GROUPS[-1])


def quantize(lm: Any, precision: str, options: ExecuTorchOptions) -> dict[str, Any]:
    """8da4w (``int4-dynamic``) or 8da8w (``int8-dynamic``) on every Linear, in place; embeddings stay fp32."""
    import torch

    from kiln.quant.pt2e import load_torchao
    from kiln.targets.executorch.lower import INSTALL, quiet

    ao = load_torchao("torchao.quantization", f"executorch:{precision}", INSTALL)
    granularity = load_torchao("torchao.quantization.granularity", f"executorch:{precision}", INSTALL)
    linears = {name: m for name, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    left: dict[str, str] = {}
    if precision == "int4-dynamic":
        group = group_for(lm, options.group_size)
        config = ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=granularity.PerGroup(group)
        )
        left = {
            f"{n}.weight": f"input width not a multiple of {group}" for n, m in linears.items() if m.in_features % group
        }
        weights = f"int4 symmetric in groups of {group} (8da4w)"
    else:
        config = ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=granularity.PerAxis(0)
        )
        weights = "int8 per channel (8da8w)"
    chosen = {n for n in linears if f"{n}.weight" not in left}
    try:
        with quiet():
            ao.quantize_(lm, config, filter_fn=lambda m, fqn: fqn in chosen and isinstance(m, torch.nn.Linear))
    except Exception as err:  # torchao raises plain assertions from its packing code
        raise TargetBuildError(f"torchao dynamic quantization failed: {error_line(err)}") from err
    return {
        "tool": "torchao.quantization.quantize_ (Int8DynamicActivationIntxWeightConfig)",
        "scheme": "8da4w" if precision == "int4-dynamic" else "8da8w",
        "weights": weights,
        "activations": "int8 dynamic, per token (quantized at run time)",
        "embeddings": "fp32",
        "linears": len(chosen),
        "left_float": left,
    }


def metadata(sig: Signature, tokenizer_dir: Any, custom: bool) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads, named as ``export_llama`` writes them."""
    cache = sig.cache
    assert cache is not None
    eos: tuple[int, ...] = ()
    if tokenizer_dir is not None and (tokenizer_dir / TOKENIZER_FILE).is_file():
        eos = Tokenizer(tokenizer_dir).eos_ids
    if not eos and cache.eos_token_id is not None:
        eos = (cache.eos_token_id,)
    methods: dict[str, Any] = {
        "get_max_seq_len": sig.dims["sequence"].max,
        "get_max_context_len": sig.context_length(),
        "get_vocab_size": cache.vocab_size,
        "get_n_layers": cache.layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": custom,
        "enable_dynamic_shape": True,
    }
    if cache.bos_token_id is not None:
        methods["get_bos_id"] = cache.bos_token_id
    if eos:
        methods["get_eos_ids"] = list(eos)
    return methods


def compile_llm(ctx: CompileContext) -> Artifact:
    """Build the static-cache ``.pte`` of a causal LM (fp32, 8da8w or 8da4w, on XNNPACK)."""
    import torch

    from kiln.manifest import Execution
    from kiln.targets.executorch.checks import _check_kernels, _flag_portable, _version
    from kiln.targets.executorch.delegation import analyse
    from kiln.targets.executorch.lower import lower, quiet, to_executorch

    options: ExecuTorchOptions = ctx.options
    sig = ctx.export.signature
    if options.delegate != "xnnpack":
        raise ConfigError(
            f"executorch: a causal LM builds for delegate = 'xnnpack' only (this is {options.delegate!r}): "
            "its cache ops run on CPU kernels; remove delegate or build the coreml target"
        )
    if ctx.precision == "int8":
        raise ConfigError(
            "executorch:int8 (static, calibrated) is not offered for causal LMs; build executorch:int4-dynamic "
            "(8da4w) or executorch:int8-dynamic"
        )
    unavailable = custom_ops_error()
    custom = unavailable is None
    lm = rebuild(ctx)
    quantization = quantize(lm, ctx.precision, options) if ctx.precision != "fp32" else None
    module = static_module(lm, sig, custom)
    cache = sig.cache
    assert cache is not None
    seq = sig.dims["sequence"]
    example = min(4, seq.max)
    dim = torch.export.Dim("sequence", min=1, max=seq.max)
    args = (torch.zeros(1, example, dtype=torch.long), torch.arange(example, dtype=torch.long))
    try:
        with quiet(), torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=({1: dim}, {0: dim}), strict=False)
    except Exception as err:
        raise TargetBuildError(
            f"executorch: capturing {type(lm).__name__} with a static cache failed: {error_line(err)}; "
            "build onnxruntime or openvino for this model"
        ) from err
    methods = metadata(sig, ctx.export.tokenizer_dir, custom)
    edge = lower(program, options, constant_methods=methods)
    delegation = analyse(edge.exported_program().graph_module, options.delegate)
    emitted = to_executorch(edge, options)
    path = ctx.out_dir / MAIN
    path.write_bytes(emitted.buffer)
    if ctx.export.tokenizer_dir is not None and (ctx.export.tokenizer_dir / TOKENIZER_FILE).is_file():
        shutil.copyfile(ctx.export.tokenizer_dir / TOKENIZER_FILE, ctx.out_dir / TOKENIZER_FILE)  # beside the .pte
    plan = emitted.executorch_program.execution_plan[0]
    info = Execution(execution_precision=ctx.precision)
    info.update(
        {
            "delegate": options.delegate,
            "llm": {
                "form": "ExecuTorch LLM (static KV cache in mutable buffers, updated in place)",
                "method": "forward(tokens [1, seq], input_pos [seq]) -> logits [1, seq, vocab]",
                "max_seq_len": seq.max,
                "max_context_len": sig.context_length(),
                "cache": f"{cache.layers} layers x key/value [1, {sig.context_length()}, {cache.kv_heads}, "
                f"{cache.head_dim}] fp32",
                "attention": "llama::custom_sdpa + llama::update_cache (executorch.extension.llm.custom_ops)"
                if custom
                else f"plain SDPA over index_copy_ (ExecuTorch's custom ops did not load: {unavailable})",
                "metadata": methods,
                "tokenizer": TOKENIZER_FILE if (ctx.out_dir / TOKENIZER_FILE).is_file() else None,
            },
            "planned_arena_bytes": int(sum(plan.non_const_buffer_sizes)),
            "delegation": delegation.record(),
            "pte_bytes": path.stat().st_size,
            "executorch_version": _version(),
        }
    )
    if not custom:
        info.notes.append(f"ExecuTorch's LLM custom ops did not load ({unavailable}): static cache with plain SDPA")
    if quantization is not None:
        info.quantization = quantization
    _check_kernels(plan, options, info)
    _flag_portable(delegation, info)
    return Artifact("executorch", ctx.precision, ctx.out_dir, MAIN, sig, info=info)


class PteSession(DecodeSession):
    """One sequence on its own loaded ``forward`` (its own planned memory, so its own cache). A new
    sequence starts writing at position 0; what stays in the cache past it is never read (causal)."""

    def __init__(self, program: Any, sig: Signature) -> None:
        from kiln.targets.executorch.runner import native_stderr_silenced

        super().__init__(sig)
        with native_stderr_silenced():
            self.method = program.load_method("forward")

    def _reset(self) -> None:
        pass

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        import torch

        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        pos = torch.from_numpy(np.ascontiguousarray(positions[0], dtype=np.int64))
        return self.method.execute([tokens, pos])[0].numpy()

    def close(self) -> None:
        self.method = None


class LlmRunner(Runner):
    """A static-cache ``.pte``: decoding goes through :meth:`decode_session` (kiln's gate, bench and
    ``kiln generate``); the step graph's ``infer`` with explicit past tensors has no counterpart."""

    def __init__(self, artifact: Artifact, options: RunOptions) -> None:
        from kiln.targets.executorch.runner import native_stderr_silenced, runtime, set_runtime_threads

        custom_ops_error()  # registers llama::custom_sdpa / update_cache with the runtime
        rt, _ = runtime()
        self.sig = artifact.signature
        self.threads = set_runtime_threads(options.threads)
        with native_stderr_silenced():
            self.program = rt.load_program(str(artifact.main))

    def decode_session(self, signature: Signature) -> DecodeSession:
        return PteSession(self.program, signature)

    def metadata(self) -> dict[str, Any]:
        """Every constant method of the program (the LLM runner's metadata) and its value."""
        from kiln.targets.executorch.runner import native_stderr_silenced

        values: dict[str, Any] = {}
        with native_stderr_silenced():
            for name in sorted(self.program.method_names - {"forward"}):
                out = self.program.load_method(name).execute([])
                values[name] = list(out) if name == "get_eos_ids" else out[0]  # a list constant: one value each
        return values

    def infer(self, inputs: Arrays) -> Arrays:
        raise ConfigError(
            "executorch: this .pte keeps its KV cache inside (ExecuTorch's LLM form) and takes no past.* inputs; "
            "decode it through kiln generate or kiln.decoding.session_for"
        )

    def info(self) -> dict[str, Any]:
        return {"threads": self.threads}

    def close(self) -> None:
        self.program = None
