"""How much of a lowered program a delegate took: ops and estimated FLOPs, delegated or not.

ExecuTorch runs what its partitioner did not take on the runtime's portable kernels: reference
C++ loops, one op at a time, no threads, no fusion. A program whose compute mostly stays there
is slow on the device whatever the delegate, so kiln counts, from the lowered edge graph, the
compute ops inside each delegate's subgraphs and those left outside, and estimates FLOPs per op
at the upper bounds of the dims (matmuls and convolutions exactly; other ops by output elements,
norms and softmax weighted by their few passes). Bookkeeping (tuple access, symbolic sizes, views
that the runtime turns into aliases) is not counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Ops that move no data at run time: ExecuTorch turns view_copy into a view (remove_view_copy).
BOOKKEEPING = ("getitem", "sym_size", "sym_numel", "sym_stride", "view_copy", "_assert_scalar", "alias_copy")
# A few passes over each output element.
PASSES = {"native_layer_norm": 8, "layer_norm": 8, "_softmax": 5, "softmax": 5, "native_group_norm": 8}
MATMULS = ("mm", "bmm", "addmm", "linear", "matmul")
CONVS = ("convolution", "conv2d", "conv1d")


@dataclass
class Delegation:
    """Ops and estimated FLOPs inside delegate subgraphs and left on portable kernels."""

    delegate: str
    subgraphs: int = 0
    delegated: Counter[str] = field(default_factory=Counter)
    portable: Counter[str] = field(default_factory=Counter)
    delegated_flops: float = 0.0
    portable_flops: dict[str, float] = field(default_factory=dict)

    @property
    def op_share(self) -> float:
        total = sum(self.delegated.values()) + sum(self.portable.values())
        return sum(self.delegated.values()) / total if total else 1.0

    @property
    def flop_share(self) -> float:
        total = self.delegated_flops + sum(self.portable_flops.values())
        return self.delegated_flops / total if total else 1.0

    @property
    def mostly_portable(self) -> bool:
        """Most of the compute, by estimated FLOPs or by ops, stays on portable kernels."""
        return bool(self.portable) and (self.flop_share < 0.5 or self.op_share < 0.5)

    def portable_ops(self) -> list[str]:
        """The ops left on portable kernels, the costliest first."""
        return sorted(self.portable, key=lambda op: (-self.portable_flops.get(op, 0.0), op))

    def record(self) -> dict[str, Any]:
        """The manifest's ``execution.delegation``."""
        return {
            "delegate": self.delegate,
            "subgraphs": self.subgraphs,
            "ops_delegated": sum(self.delegated.values()),
            "ops_portable": sum(self.portable.values()),
            "op_share": round(self.op_share, 4),
            "flop_share": round(self.flop_share, 4),
            "flops_estimated": round(self.delegated_flops + sum(self.portable_flops.values())),
            "portable_ops": {op: self.portable[op] for op in self.portable_ops()},
            "delegated_ops": dict(sorted(self.delegated.items())),
            "mostly_portable": self.mostly_portable,
        }


def op_name(node: Any) -> str:
    """``native_layer_norm`` for ``aten.native_layer_norm.default`` (ATen and edge dialects)."""
    name = getattr(node.target, "__name__", str(node.target))
    parts = name.split(".")
    return parts[1] if len(parts) >= 3 else parts[0]


def _counted(node: Any) -> bool:
    if node.op != "call_function":
        return False
    module = getattr(node.target, "__module__", "") or ""
    if module in ("_operator", "operator", "math", "builtins"):  # symbolic size arithmetic
        return False
    return op_name(node) not in BOOKKEEPING


def _hint(size: Any) -> int:
    """A size at its upper bound (what ExecuTorch plans for); the trace's hint if unbounded."""
    if isinstance(size, int):
        return size
    from torch.fx.experimental.symbolic_shapes import optimization_hint

    node = size.node
    upper = node.shape_env.bound_sympy(node.expr).upper if node.shape_env is not None else None
    return int(upper) if upper is not None and upper.is_finite else optimization_hint(size, fallback=1)


def _shape(value: Any) -> list[int]:
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    return [_hint(s) for s in getattr(value, "shape", ())]


def flops(node: Any) -> float:
    """An estimate of the node's floating-point operations at the planned upper bounds."""
    out = _shape(node.meta.get("val"))
    elements = math.prod(out) if out else 1
    name = op_name(node)
    if name in MATMULS:
        first = node.args[1] if name == "addmm" else node.args[0]
        inner = _shape(getattr(first, "meta", {}).get("val"))
        return 2.0 * elements * (inner[-1] if inner else 1)
    if name in CONVS:
        weight = _shape(getattr(node.args[1], "meta", {}).get("val"))
        return 2.0 * elements * math.prod(weight[1:]) if weight else float(elements)
    return float(elements * PASSES.get(name, 1))


def analyse(graph_module: Any, delegate: str) -> Delegation:
    """The delegation of a lowered edge program's graph module (``to_edge_transform_and_lower``)."""
    found = Delegation(delegate)
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if op_name(node) == "executorch_call_delegate":
            found.subgraphs += 1
            lowered = getattr(graph_module, node.args[0].target)
            for inner in lowered.original_module.graph.nodes:
                if _counted(inner):
                    found.delegated[op_name(inner)] += 1
                    found.delegated_flops += flops(inner)
        elif _counted(node):
            name = op_name(node)
            found.portable[name] += 1
            found.portable_flops[name] = found.portable_flops.get(name, 0.0) + flops(node)
    return found
