"""Local Hugging Face model folders (``hf:path``), loaded offline with transformers.

The model is wrapped so that it takes its inputs positionally in the spec's order and returns a
plain dict of its non-empty ``ModelOutput`` fields: stable output names for every backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kiln.config import DimSpec, InputSpec, ModelConfig
from kiln.errors import SourceError
from kiln.loaded import LoadedModel
from kiln.spec import Signature

SENTENCES = [
    "kiln fires a PyTorch model into artifacts for every runtime.",
    "The quick brown fox jumps over the lazy dog.",
    "Release engineers gate builds on parity and latency.",
    "A sentence embedding maps text to a vector.",
]


def _wrap(model: Any, names: list[str]) -> Any:
    import torch

    if not 1 <= len(names) <= 3:
        raise SourceError(f"hf: sources take 1 to 3 inputs (ids, mask, token types), got {names}")

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


def default_signature(tokenizer: Any, config: Any, model: ModelConfig) -> Signature:
    if model.inputs:
        return Signature(tuple(model.inputs), dict(model.dims))
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    ranges = {"input_ids": (0, config.vocab_size - 1), "attention_mask": (1, 1), "token_type_ids": (0, 0)}
    inputs = tuple(InputSpec(name=n, shape=["batch", "sequence"], dtype="int64", range=ranges[n]) for n in names)
    max_len = min(128, getattr(config, "max_position_embeddings", 128))
    dims = {
        "batch": model.dims.get("batch", DimSpec(min=1, opt=1, max=8)),
        "sequence": model.dims.get("sequence", DimSpec(min=1, opt=min(32, max_len), max=max_len)),
    }
    return Signature(inputs, dims)


def load_hf(folder: Path, model: ModelConfig) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the folder is the model
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise SourceError("hf: sources need transformers; pip install 'kiln[hf]'") from err
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        task = model.task
        if task == "auto":
            archs = getattr(config, "architectures", None) or []
            task = (
                "text-classification"
                if any(a.endswith("ForSequenceClassification") for a in archs)
                else ("feature-extraction")
            )
        cls = (
            transformers.AutoModelForSequenceClassification
            if task == "text-classification"
            else (transformers.AutoModel)
        )
        hf_model = cls.from_pretrained(folder, attn_implementation="eager").eval()
    except Exception as err:
        raise SourceError(f"hf:{folder} failed to load ({type(err).__name__}: {err})") from err
    sig = default_signature(tokenizer, config, model)
    sizes = sig.example_sizes()
    batch, seq = sizes.get("batch", 1), sizes.get("sequence", 16)
    enc = tokenizer(
        (SENTENCES * batch)[:batch], padding="max_length", truncation=True, max_length=seq, return_tensors="pt"
    )
    example = tuple(enc[spec.name] for spec in sig.inputs)
    return LoadedModel("hf", sig, module=_wrap(hf_model, sig.input_names), example=example)
