"""The 2:4 pattern check: which weights TensorRT's sparse kernels can use; no TensorRT needed.

TensorRT's structured sparsity (``BuilderFlag.SPARSE_WEIGHTS``, Ampere and later) applies to
convolution and fully connected weights in which, for every output channel (and every kernel
position), each group of four consecutive input channels holds at most two non-zeros. Convolution
weights are ``[K, C, R, S]`` (groups along ``C``); ``Gemm`` weights are ``[N, K]`` with
``transB = 1`` and ``[K, N]`` otherwise, ``MatMul`` weights ``[K, N]`` (groups along ``K``).
Weights behind ``DequantizeLinear`` / ``QuantizeLinear`` (a Q/DQ model) are traced back to their
initializer. A weight is *eligible* when its layer kind and shape allow the pattern at all
(``groups = 1``, input channels a multiple of 4) and *qualifies* when it follows it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPARSITY = "sparsity-2of4.json"


@dataclass
class LayerPattern:
    node: str
    op: str
    weight: str
    shape: list[int]
    eligible: bool
    qualifies: bool
    reason: str
    groups: int = 0  # groups of four input channels checked
    dense_groups: int = 0  # groups with more than two non-zeros
    zero_fraction: float = 0.0


@dataclass
class SparsityReport:
    layers: list[LayerPattern] = field(default_factory=list)

    @property
    def qualifying(self) -> list[str]:
        return [layer.node for layer in self.layers if layer.qualifies]

    @property
    def eligible(self) -> list[str]:
        return [layer.node for layer in self.layers if layer.eligible]

    @property
    def all_eligible_qualify(self) -> bool:
        """True when every eligible weight has the pattern (and there is at least one)."""
        return bool(self.eligible) and len(self.qualifying) == len(self.eligible)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eligible": self.eligible,
            "qualifying": self.qualifying,
            "all_eligible_qualify": self.all_eligible_qualify,
            "layers": [asdict(layer) for layer in self.layers],
        }

    def write(self, folder: Path) -> Path:
        path = folder / SPARSITY
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def pattern_2of4(weight: np.ndarray, axis: int) -> tuple[int, int]:
    """(groups, groups with more than two non-zeros) along ``axis`` in runs of four."""
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    nonzeros = np.count_nonzero(groups, axis=-1)
    return int(nonzeros.size), int((nonzeros > 2).sum())


def _weight_source(name: str, producers: dict[str, Any], initializers: dict[str, Any]) -> str | None:
    """Follow DequantizeLinear / QuantizeLinear back to the initializer holding the weight."""
    seen = 0
    while name not in initializers and seen < 4:
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            return None
        name, seen = node.input[0], seen + 1
    return name if name in initializers else None


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _input_axis(node: Any, rank: int) -> tuple[int | None, str]:
    """The input-channel axis of a layer's weight, or None with the reason it is not eligible."""
    if node.op_type == "Conv":
        if _attr(node, "group", 1) != 1:
            return None, "grouped convolution"
        return (1, "") if rank >= 3 else (None, f"conv weight of rank {rank}")
    if rank != 2:
        return None, f"{node.op_type} weight of rank {rank}"
    if node.op_type == "Gemm":
        return (1 if _attr(node, "transB", 0) else 0), ""
    return 0, ""  # MatMul: x [.., K] @ W [K, N]


def check_2of4(model: Any) -> SparsityReport:
    """Check every Conv / Gemm / MatMul weight of an ONNX model (a path or ``ModelProto``)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model)) if isinstance(model, str | Path) else model
    initializers = {init.name: init for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    report = SparsityReport()
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.name or f"{node.op_type}_{i}"
        source = _weight_source(node.input[1], producers, initializers)
        if source is None:
            report.layers.append(
                LayerPattern(name, node.op_type, node.input[1], [], False, False, "weight is not a constant")
            )
            continue
        weight = numpy_helper.to_array(initializers[source])
        axis, reason = _input_axis(node, weight.ndim)
        layer = LayerPattern(name, node.op_type, source, list(weight.shape), False, False, reason)
        if axis is not None and weight.shape[axis] % 4:
            layer.reason = f"{weight.shape[axis]} input channels, not a multiple of 4"
        elif axis is not None:
            layer.groups, layer.dense_groups = pattern_2of4(weight, axis)
            layer.eligible = True
            layer.qualifies = layer.dense_groups == 0
            layer.zero_fraction = round(float((weight == 0).mean()), 4)
            layer.reason = (
                "2:4 along input channels"
                if layer.qualifies
                else f"{layer.dense_groups} groups of 4 hold more than 2 non-zeros"
            )
        report.layers.append(layer)
    return report
