"""What a TensorRT engine really does: layer precisions and sparse tactics, and the flags they raise.

Reads the engine inspector's JSON (``ProfilingVerbosity.DETAILED``,
``get_engine_information(LayerInformationFormat.JSON)``, with an execution context whose input
shapes are set, since dynamic shapes otherwise hide the tensor formats) and the builder's log.
Each layer's precision is the type of its weights when it has some, else of its first input
(``Format/Datatype``), as NVIDIA's engine explorer does. *Compute* layers are the convolutions
and matrix multiplies: an ``int8`` engine whose compute layers hold no INT8, or a ``2:4`` engine
with no sparse tactic (none named ``sparse``, none in the builder's "picked sparse implementation"
line), is flagged. Pure Python: it parses text, so it runs without TensorRT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Substrings of TensorRT's format / type descriptions, most specific first ("UInt8" before "Int8",
# "BFloat16" before "Float").
_KEYWORDS = (
    ("uint8", ("UInt8",)),
    ("int8", ("Int8", "INT8")),
    ("fp8", ("FP8", "Float8", "E4M3")),
    ("bf16", ("BFloat16", "BF16")),
    ("fp16", ("FP16", "Half")),
    ("fp32", ("FP32", "Float")),
    ("int32", ("Int32", "INT32")),
    ("int64", ("Int64", "INT64")),
    ("bool", ("Bool", "BOOL")),
)
_COMPUTE = ("Convolution", "Gemm", "MatrixMultiply", "FullyConnected", "Deconvolution")
_ELIGIBLE_LINE = "Layers eligible for sparse math:"
_PICKED_LINE = "picked sparse implementation for layers:"
PRECISION_WANTED = {"fp16": "fp16", "bf16": "bf16", "int8": "int8", "fp8": "fp8"}


def type_precision(description: str) -> str | None:
    """``"fp16"`` for "Channel major FP16 format where channel % 8 == 0", etc.; None if unknown."""
    for precision, words in _KEYWORDS:
        if any(word in description for word in words):
            return precision
    return None


@dataclass
class EngineSummary:
    layers: int = 0
    precisions: dict[str, int] = field(default_factory=dict)
    compute_precisions: dict[str, int] = field(default_factory=dict)
    opaque: list[str] = field(default_factory=list)  # no detail, or a fused Myelin subgraph
    sparse_tactics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "precisions": dict(sorted(self.precisions.items())),
            "compute_precisions": dict(sorted(self.compute_precisions.items())),
            "opaque_layers": len(self.opaque),
            "sparse_tactic_layers": self.sparse_tactics,
        }


def _layer_precision(layer: dict[str, Any]) -> str | None:
    weights = layer.get("Weights")
    if isinstance(weights, dict) and weights.get("Type"):
        return type_precision(str(weights["Type"]))
    for tensor in layer.get("Inputs") or []:
        described = tensor.get("Format/Datatype") if isinstance(tensor, dict) else None
        if described:
            return type_precision(str(described))
    return None


def summarize(engine_information: str) -> EngineSummary:
    """Per-precision layer counts and sparse tactics from the inspector's JSON."""
    data = json.loads(engine_information)
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    summary = EngineSummary(layers=len(layers))
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY verbosity: just a name
            summary.opaque.append(str(layer))
            continue
        name = str(layer.get("Name", "?"))
        precision = _layer_precision(layer)
        if precision is None or "Myelin" in str(layer.get("LayerType", "")) or name.startswith("{ForeignNode"):
            summary.opaque.append(name)  # a fused (Myelin) subgraph hides its kernels from the inspector
        if precision is None:
            continue
        summary.precisions[precision] = summary.precisions.get(precision, 0) + 1
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
        if any(word in kind for word in _COMPUTE):
            summary.compute_precisions[precision] = summary.compute_precisions.get(precision, 0) + 1
        if "sparse" in str(layer.get("TacticName", "")).lower():
            summary.sparse_tactics.append(name)
    return summary


def sparsity_log(messages: list[str]) -> dict[str, list[str]]:
    """The builder's two sparsity lines: layers eligible for sparse math, and those it picked."""
    found: dict[str, list[str]] = {"eligible": [], "picked": []}
    for message in messages:
        for key, marker in (("eligible", _ELIGIBLE_LINE), ("picked", _PICKED_LINE)):
            if marker in message:
                tail = message.split(marker, 1)[1]
                found[key] += [name.strip() for name in tail.split(",") if name.strip()]
    return found


def engine_flags(
    precision: str,
    summary: EngineSummary,
    sparse_requested: bool,
    sparse_log: dict[str, list[str]],
    qualifying_2of4: list[str] | None = None,
) -> list[str]:
    """What the engine did not do that its build asked for; an empty list when it did it all."""
    flags = []
    wanted = PRECISION_WANTED.get(precision)
    if wanted and not summary.compute_precisions.get(wanted):
        seen = ", ".join(f"{k} {v}" for k, v in sorted(summary.compute_precisions.items())) or "none visible"
        opaque = f"; {len(summary.opaque)} layers are opaque to the inspector" if summary.opaque else ""
        flags.append(
            f"{precision} engine has no {wanted.upper()} convolution/matmul layers (compute layers: {seen}{opaque}): "
            f"TensorRT runs them in another precision; see engine-layers.json"
        )
    if sparse_requested:
        if qualifying_2of4 is not None and not qualifying_2of4:
            flags.append("2:4 sparse weights requested but no weight has the 2:4 pattern (see sparsity-2of4.json)")
        if not summary.sparse_tactics and not sparse_log["picked"]:
            eligible = ", ".join(sparse_log["eligible"]) or "none reported"
            flags.append(
                f"2:4 sparse weights requested but TensorRT chose no sparse tactic (eligible: {eligible}): "
                "the engine runs dense kernels"
            )
    return flags
