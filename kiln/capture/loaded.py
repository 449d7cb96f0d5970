"""What a model source loads into: the one shape every exporter and reference reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kiln.spec import Signature

SourceKind = Literal["python", "pt2", "hf", "gguf", "onnx", "ensemble"]


@dataclass(frozen=True)
class LoadedModel:
    kind: SourceKind
    signature: Signature
    module: Any = None  # torch.nn.Module for python / hf / pt2 sources
    example: tuple[Any, ...] | None = None  # positional example inputs, when the source gave them
    program: Any = None  # ExportedProgram for a .pt2 source
    onnx_path: Path | None = None
    tokenizer: Path | None = None  # a folder holding the tokenizer of a causal LM, when known
    notes: tuple[str, ...] = ()  # what loading chose that every artifact's manifest should say
