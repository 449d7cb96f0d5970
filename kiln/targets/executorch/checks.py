"""What a lowered ExecuTorch program is checked for, shared by the fixed-graph and the LLM paths:
every op outside the delegate has a kernel in this runtime, and what stays on portable kernels
is named."""

from __future__ import annotations

import warnings
from typing import Any

from kiln.errors import KilnWarning, TargetBuildError
from kiln.manifest import Execution
from kiln.targets.executorch.options import ExecuTorchOptions


class PortableFallbackWarning(KilnWarning):
    """Most of a .pte's compute stays on ExecuTorch's portable kernels: slow on the device."""


def _version() -> str:
    from executorch import version

    return str(version.__version__)


def _check_kernels(plan: Any, options: ExecuTorchOptions, info: Execution) -> None:
    """Every op left outside the delegate has a kernel in this ExecuTorch runtime, or the .pte
    would fail to load; for device-only delegates the device's own runtime decides, so a note."""
    from kiln.targets.executorch.runner import runtime

    rt, _ = runtime()
    have = rt.operator_registry.operator_names
    needed = {f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators}
    missing = sorted(op for op in needed if op not in have)
    if not missing:
        return
    if options.delegate in ("xnnpack", "portable"):
        raise TargetBuildError(
            f"ExecuTorch left {', '.join(missing[:5])} outside the {options.delegate} delegate and this runtime has "
            "no kernel for it; try another precision or delegate, or another target"
        )
    info.notes.append(f"ops with no kernel in the pip runtime (the device runtime needs them): {', '.join(missing)}")


def _flag_portable(delegation: Any, info: Execution) -> None:
    """A note (and a warning) naming what stays on portable kernels."""
    ops = delegation.portable_ops()
    if not ops:
        return
    counts = ", ".join(f"{op} x{delegation.portable[op]}" for op in ops[:8])
    share = (
        f"{delegation.flop_share:.1%} of estimated FLOPs and {delegation.op_share:.0%} of ops delegated, "
        f"in {delegation.subgraphs} subgraph(s)"
    )
    if delegation.delegate == "portable":
        info.notes.append(f"no delegate: every op on portable kernels ({counts})")
        return
    if delegation.mostly_portable:
        info.portable_fallback = ops
        message = (
            f"executorch: most of the compute stays on portable kernels ({share}): {counts}; the .pte will be "
            f"slow on the device: try another delegate or target, or rewrite those ops"
        )
        info.notes.append(message)
        warnings.warn(message, PortableFallbackWarning, stacklevel=2)
    else:
        info.notes.append(f"{share}; on portable kernels: {counts}")
