"""Capture with ``torch.export``: one dynamic-shape spec, positional inputs, named outputs."""

from __future__ import annotations

import inspect
import re
from typing import Any

from kiln.errors import ExportError, error_line
from kiln.spec import Signature, random_inputs, torch_dynamic_shapes


def example_inputs(sig: Signature, given: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """Inputs to trace with: the source's own examples, else seeded ones at the example sizes."""
    import torch

    if given is not None:
        return given
    arrays = random_inputs(sig, seed=0, sizes=sig.example_sizes())
    tensors = []
    for spec in sig.inputs:
        t = torch.from_numpy(arrays[spec.name])
        tensors.append(t.to(torch.bfloat16) if spec.dtype == "bfloat16" else t)
    return tuple(tensors)


def _unsupported_op(message: str) -> str | None:
    found = re.search(r"(aten[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", message)
    return found.group(1) if found else None


def describe_failure(stage: str, err: Exception, hint: str) -> ExportError:
    """One line: the stage, the operator when one is named, the first line of the cause, a hint."""
    message = str(err).strip()
    op = _unsupported_op(message)
    what = f" (operator {op})" if op else ""
    return ExportError(f"{stage} failed{what}: {error_line(err)}; {hint}")


def pinned_dims(message: str, sig: Signature) -> str | None:
    """torch.export's "Suggested fixes" for a dim the model specializes, as one line saying which
    dim the model pins to what, and what to write in ``[model].dims`` instead."""
    if "Suggested fixes:" not in message:
        return None
    fixes = message.split("Suggested fixes:", 1)[1].strip().splitlines()
    said = []
    for line in fixes:
        found = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+)$", line)
        if not found or found.group(1) not in sig.dims:
            continue
        dim, value = found.group(1), found.group(2).strip()
        spec = sig.dims[dim]
        if value.isdigit():
            said.append(
                f"the model pins dim {dim!r} to {value} (declared {spec.min}..{spec.max}); "
                f"set [model].dims.{dim} = {{ min = {value}, max = {value} }}, or change the code that fixes its size"
            )
            continue
        bounds = dict(re.findall(r"(min|max)\s*=\s*(\d+)", value))
        low, high = bounds.get("min", str(spec.min)), bounds.get("max", str(spec.max))
        said.append(
            f"the model accepts dim {dim!r} only in {low}..{high} (declared {spec.min}..{spec.max}); "
            f"set [model].dims.{dim} = {{ min = {low}, max = {high} }}"
        )
    return "; ".join(said) or None


def capture(module: Any, args: tuple[Any, ...], sig: Signature, strict: bool) -> Any:
    """``torch.export.export`` with the spec's dynamic dims."""
    import torch

    params = inspect.signature(module.forward).parameters.values()
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    try:
        shapes = torch_dynamic_shapes(sig, varargs)
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=strict)
    except Exception as err:
        if pinned := pinned_dims(str(err), sig):
            raise ExportError(f"torch.export: {pinned}") from err
        other = "false" if strict else "true"
        raise describe_failure(
            "torch.export",
            err,
            f"try [export] strict = {other}, make the failing dim static in [model].dims, "
            "or rewrite the data-dependent code; --verbose shows the full trace",
        ) from err
