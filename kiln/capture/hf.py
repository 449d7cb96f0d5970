"""Local Hugging Face model folders (``hf:path``), loaded offline with transformers.

The task (``[model].task``, or detected from ``config.architectures``) picks the transformers Auto
class. Encoder tasks are wrapped so that the model takes its inputs positionally in the spec's
order and returns a plain dict of its non-empty ``ModelOutput`` fields (``logits``,
``start_logits``/``end_logits``, ``last_hidden_state`` ...): stable output names for every
backend. Text tasks take the folder's tokenizer; ``image-classification`` takes ``pixel_values``
sized by the folder's ``preprocessor_config.json`` and needs no tokenizer. ``text-generation`` is
handed to :mod:`kiln.capture.causal`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from kiln.capture.loaded import LoadedModel
from kiln.config import DimSpec, InputSpec, ModelConfig
from kiln.errors import SourceError
from kiln.spec import Signature, random_inputs

SENTENCES = [
    "kiln fires a PyTorch model into artifacts for every runtime.",
    "The quick brown fox jumps over the lazy dog.",
    "Release engineers gate builds on parity and latency.",
    "A sentence embedding maps text to a vector.",
]


class HFTask(NamedTuple):
    auto_class: str  # in transformers
    mapping: str  # table of head class names in transformers.models.auto.modeling_auto
    suffix: str  # the naming convention, for architectures the table does not list


# In detection order: the first task whose table or suffix matches an architecture wins
# (XLMWithLMHeadModel is in both the masked and the causal LM tables; it is a masked LM).
TASKS = {
    "token-classification": HFTask(
        "AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "ForTokenClassification"
    ),
    "question-answering": HFTask(
        "AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "ForQuestionAnswering"
    ),
    "fill-mask": HFTask("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "ForMaskedLM"),
    "image-classification": HFTask(
        "AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "ForImageClassification"
    ),
    "text-classification": HFTask(
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "ForSequenceClassification",
    ),
    "text-generation": HFTask("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "ForCausalLM"),
    "feature-extraction": HFTask("AutoModel", "MODEL_MAPPING_NAMES", "Model"),  # the fallback, never matched
}
DEFAULT_TASK = "feature-extraction"
# transformers 5 makes an empty-vocabulary tokenizer for a folder that has none: look first.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
)


@functools.cache
def _head_classes(mapping: str) -> frozenset[str]:
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for value in getattr(modeling_auto, mapping, {}).values():  # a table renamed upstream: suffixes still work
        names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


def resolve_task(config: Any, given: str) -> str:
    """The task of a transformers config: ``given`` unless it is ``"auto"``, else the first task
    whose head class matches one of ``config.architectures``, else ``feature-extraction``."""
    if given != "auto":
        return given
    for arch in getattr(config, "architectures", None) or []:
        for task, spec in TASKS.items():
            if task != DEFAULT_TASK and (arch.endswith(spec.suffix) or arch in _head_classes(spec.mapping)):
                return task
    return DEFAULT_TASK


def _wrap(model: Any, names: list[str]) -> Any:
    import torch

    if not 1 <= len(names) <= 3:
        raise SourceError(f"hf: sources take 1 to 3 inputs (ids, mask, token types or pixel values), got {names}")

    class HFWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        # Explicit positional slots (not *args): torch.export matches dynamic_shapes per argument.
        def forward(
            self, x0: torch.Tensor, x1: torch.Tensor | None = None, x2: torch.Tensor | None = None
        ) -> dict[str, torch.Tensor]:
            args = (x0, x1, x2)[: len(names)]
            out = self.model(**dict(zip(names, args, strict=True)), return_dict=True)
            return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    return HFWrapper().eval()


def _batch(model: ModelConfig) -> DimSpec:
    return model.dims.get("batch", DimSpec(min=1, opt=1, max=8))


def default_signature(tokenizer: Any, config: Any, model: ModelConfig) -> Signature:
    """Text inputs: the tokenizer's ids, mask and token types over ``[batch, sequence]``."""
    if model.inputs:
        return Signature(tuple(model.inputs), dict(model.dims))
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    ranges = {"input_ids": (0, config.vocab_size - 1), "attention_mask": (1, 1), "token_type_ids": (0, 0)}
    inputs = tuple(InputSpec(name=n, shape=["batch", "sequence"], dtype="int64", range=ranges[n]) for n in names)
    max_len = min(128, getattr(config, "max_position_embeddings", 128))
    dims = {
        "batch": _batch(model),
        "sequence": model.dims.get("sequence", DimSpec(min=1, opt=min(32, max_len), max=max_len)),
    }
    return Signature(inputs, dims)


def image_signature(folder: Path, config: Any, model: ModelConfig) -> Signature:
    """``pixel_values`` float32 ``[batch, channels, H, W]``, H and W static from the processor."""
    if model.inputs:
        return Signature(tuple(model.inputs), dict(model.dims))
    height, width = _image_size(folder, config)
    shape: list[int | str] = ["batch", getattr(config, "num_channels", 3), height, width]
    return Signature((InputSpec(name="pixel_values", shape=shape, dtype="float32"),), {"batch": _batch(model)})


def _image_size(folder: Path, config: Any) -> tuple[int, int]:
    """What the image processor hands the model: the center crop when it crops, else the resize."""
    path = folder / "preprocessor_config.json"
    # Read as JSON, not through AutoImageProcessor: transformers' processors need torchvision or
    # Pillow, and only two keys matter here.
    processor = json.loads(path.read_text()) if path.is_file() else {}
    for size in (processor.get("crop_size") if processor.get("do_center_crop") else None, processor.get("size")):
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict) and "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if isinstance(size, dict) and "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise SourceError(
        f"hf:{folder} gives no image size: save its image processor there (processor.save_pretrained(folder)) "
        "or set [model].inputs"
    )


def offline_transformers() -> Any:
    """transformers, set never to reach for a hub; one ``SourceError`` line when it is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the folder is the model
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise SourceError("hf: sources need transformers; pip install 'kiln[hf]'") from err
    return transformers


def _from_pretrained(folder: Path, task: str) -> Any:
    import transformers

    cls = getattr(transformers, TASKS[task].auto_class)
    try:
        return cls.from_pretrained(folder, attn_implementation="eager").eval()
    except Exception as err:
        raise SourceError(f"hf:{folder} failed to load for {task} ({type(err).__name__}: {err})") from err


def load_hf(folder: Path, model: ModelConfig) -> LoadedModel:
    """Load an ``hf:`` folder for its task: text encoders, image classifiers or causal LMs."""
    transformers = offline_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as err:
        raise SourceError(f"hf:{folder} has no readable config.json ({type(err).__name__}: {err})") from err
    task = resolve_task(config, model.task)
    if task == "image-classification":
        return _load_image(folder, model, config)
    fix = f"{task} needs the model's tokenizer: save it there with tokenizer.save_pretrained(folder)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(f"hf:{folder} has no tokenizer files; {fix}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise SourceError(f"hf:{folder}: the tokenizer failed to load ({type(err).__name__}: {err}); {fix}") from err
    if task == "text-generation":
        from kiln.capture.causal import load_causal_lm

        return load_causal_lm(folder, model, config, tokenizer)
    return _load_text(folder, model, config, tokenizer, task)


def _load_text(folder: Path, model: ModelConfig, config: Any, tokenizer: Any, task: str) -> LoadedModel:
    hf_model = _from_pretrained(folder, task)
    sig = default_signature(tokenizer, config, model)
    sizes = sig.example_sizes()
    batch, seq = sizes.get("batch", 1), sizes.get("sequence", 16)
    enc = tokenizer(
        (SENTENCES * batch)[:batch], padding="max_length", truncation=True, max_length=seq, return_tensors="pt"
    )
    example = tuple(enc[spec.name] for spec in sig.inputs)
    return LoadedModel("hf", sig, module=_wrap(hf_model, sig.input_names), example=example)


def _load_image(folder: Path, model: ModelConfig, config: Any) -> LoadedModel:
    import torch

    hf_model = _from_pretrained(folder, "image-classification")
    sig = image_signature(folder, config, model)
    # Seeded standard-normal pixels: what a normalizing processor makes of an image, roughly.
    arrays = random_inputs(sig, seed=0, sizes=sig.example_sizes())
    example = tuple(torch.from_numpy(arrays[name]) for name in sig.input_names)
    return LoadedModel("hf", sig, module=_wrap(hf_model, sig.input_names), example=example)
