"""Capture with ``torch.export``: one dynamic-shape spec, positional inputs, named outputs."""

from __future__ import annotations

import contextlib
import inspect
import io
import linecache
import os
import re
import traceback
from collections.abc import Iterator
from typing import Any

from kiln.errors import ExportError, error_line
from kiln.spec import SUM, Signature, random_inputs, torch_dynamic_shapes


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


def describe_failure(stage: str, err: Exception, hint: str, where: str | None = None) -> ExportError:
    """One line: the stage, where in the model's code (``where``, when known), the operator when
    one is named, the first line of the cause, a hint."""
    message = str(err).strip()
    op = _unsupported_op(message)
    what = (f" at {where}" if where else "") + (f" (operator {op})" if op else "")
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


def model_files(module: Any) -> set[str]:
    """The files that define the model's own classes (its submodules' too): where a capture
    failure is the user's code. torch's layers and kiln's wrappers are left out."""
    import torch

    import kiln

    skip = tuple(os.path.dirname(os.path.abspath(m.__file__ or "")) + os.sep for m in (torch, kiln))
    files = set()
    for cls in {type(sub) for sub in module.modules()}:
        # Its methods' code says where the class is, even when its module is not in sys.modules.
        for attr in vars(cls).values():
            path = getattr(getattr(attr, "__code__", None), "co_filename", None)
            if path is not None and not os.path.abspath(path).startswith(skip):
                files.add(os.path.abspath(path))
    return files


_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')  # a traceback's, as torch's messages quote them
_GRAPH_LINE = re.compile(r"# File: (\S+?):(\d+) in ")  # the partial graph's comments


def user_line(err: BaseException, files: set[str]) -> str | None:
    """Where in the model's ``files`` the capture failed, as ``path:line (`code`)``: the innermost
    frame in them of the error's traceback (non-strict export runs the model's Python), else the
    last place in them that torch's message or partial graph quotes (strict export traces it)."""
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    texts = [str(link) for link in chain] + [str(getattr(err, "partial_fx_graph", "") or "")]
    found = _frame_in(chain, files) or _quoted_in(texts, files)
    if found is None:
        return None
    path, line = found
    shown = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
    code = linecache.getline(path, line).strip()
    return f"{shown}:{line}" + (f" (`{code[:80]}`)" if code else "")


def _frame_in(chain: list[BaseException], files: set[str]) -> tuple[str, int] | None:
    """The innermost traceback frame in ``files``, over the chain from its first cause."""
    found = None
    for link in reversed(chain):
        for frame in traceback.extract_tb(link.__traceback__):
            if frame.lineno is not None and os.path.abspath(frame.filename) in files:
                found = (frame.filename, frame.lineno)
    return found


def _quoted_in(texts: list[str], files: set[str]) -> tuple[str, int] | None:
    """The last ``File "x.py", line N`` (or partial graph's ``# File: x.py:N``) in ``files``."""
    for text in texts:
        quoted = [(p, int(n)) for rx in (_FILE_LINE, _GRAPH_LINE) for p, n in rx.findall(text)]
        found = next((q for q in reversed(quoted) if os.path.abspath(q[0]) in files), None)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """torch.export prints its partial graph to stderr on a failure (twice); the one line names
    the model's own line instead. ``kiln --verbose`` shows it."""
    if os.environ.get("KILN_VERBOSE"):
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def capture(module: Any, args: tuple[Any, ...], sig: Signature, strict: bool) -> Any:
    """``torch.export.export`` with the spec's dynamic dims; a failure is one line naming the
    model's own file and line where it failed."""
    import torch

    params = inspect.signature(module.forward).parameters.values()
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    try:
        shapes = torch_dynamic_shapes(sig, varargs)
        with _quiet_stderr():
            program = torch.export.export(module, args, dynamic_shapes=shapes, strict=strict)
    except Exception as err:
        if pinned := pinned_dims(str(err), sig):
            raise ExportError(f"torch.export: {pinned}") from err
        other = "false" if strict else "true"
        raise describe_failure(
            "torch.export",
            err,
            f"try [export] strict = {other}, make the failing dim static in [model].dims, "
            "or rewrite the data-dependent code; --verbose shows the full trace",
            where=user_line(err, model_files(module)),
        ) from err
    declare_sums(program, sig)
    return program


def declare_sums(program: Any, sig: Signature) -> None:
    """Drop the range torch.export keeps for an input axis that is a sum of dims
    (``past+sequence``): it derives the size from the parts, whose ranges hold, but bounds the sum
    by its own reasoning, where every dynamic size is at least 2 (a mask over past 0 and sequence 1
    would fail the program's guards), and a program saved with it loads into one that
    ``run_decompositions`` (OpenVINO's conversion) refuses ("expected sympy.Symbol")."""
    if not any(isinstance(d, str) and SUM in d for spec in sig.inputs for d in spec.shape):
        return
    for expr in [e for e in program.range_constraints if not e.is_symbol]:
        del program.range_constraints[expr]
