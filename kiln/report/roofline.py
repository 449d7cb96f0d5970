"""Each cell's fraction of peak, counted against the precision it executes.

A cell's name says what was asked (``int8-dynamic``, ``int8-weights``, ``bf16``); the runtime's
``execution_precision`` says what runs: ``fp32`` for a bf16 request on a CPU without bf16
instructions, ``int8 weights, bf16 compute``, ``int8 (mixed: {'int8': 72, 'fp32': 24})``. The
fraction is counted against the measured peak of that compute precision (fp32, bf16 or int8);
a mixed cell against the fastest precision it runs, so its fraction is a floor. A cell that
still runs faster than its precision's measured peak shows that the micro-benchmark missed a
faster kernel or ran on a busy machine: nothing is capped, that precision's peak becomes the
cell's rate for every fraction of the report, and the cell is flagged.

Pure functions of the results, so ``kiln report`` re-counts a results.json written by an older
kiln the same way.
"""

from __future__ import annotations

import ast
import re

from kiln.results import FailedCell, MeasuredCell, Peak, PeakRaise

# Compute precisions a peak is measured for, slowest first; int4 weights run on int8 kernels at
# best (they are unpacked to int8, or to float where the CPU has no int8 dot product).
ORDER = ("fp32", "bf16", "int8")
ALIASES = {"float": "fp32", "fp32": "fp32", "bf16": "bf16", "int8": "int8", "int4": "int8"}
FLAG = "above the measured peak"


def _named(text: str) -> str | None:
    """The compute precision a word names: 'int8-dynamic' -> int8, 'fp16' -> None (no peak)."""
    word = re.split(r"[\s(,-]", text.strip(), maxsplit=1)[0].lower()
    return ALIASES.get(word)


def compute_precision(execution: str | None, requested: str) -> str | None:
    """What a cell computes in (fp32, bf16 or int8), from the runtime's execution precision, else
    the requested precision; ``None`` for one no peak is measured for (fp16)."""
    if not execution:
        return _named(requested)
    if m := re.search(r"weights, (\S+) compute", execution):
        return _named(m.group(1))
    if m := re.search(r"\(mixed: (\{.*\})\)", execution):
        try:
            counts = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            counts = {}
        found = {p for name in counts if (p := _named(str(name)))}
        if found:
            return max(found, key=ORDER.index)
    return _named(execution)


def _raises(cells: list[MeasuredCell], peak: Peak) -> list[tuple[PeakRaise, MeasuredCell]]:
    """Per precision, the fastest cell that beat the measured peak."""
    out = []
    for precision in ORDER:
        measured = peak.measured.for_precision(precision)
        mine = [c for c in cells if c.roofline_precision == precision and c.gflops]
        fastest = max(mine, key=lambda c: c.gflops or 0.0, default=None)
        if measured and fastest and fastest.gflops and fastest.gflops > measured:
            where = f"{fastest.key} batch {fastest.batch}"
            raised = PeakRaise(precision=precision, measured_gflops=measured, gflops=fastest.gflops, cell=where)
            out.append((raised, fastest))
    return out


def count_against_peak(cells: list[MeasuredCell | FailedCell], peak: Peak | None) -> None:
    """Set each measured cell's ``roofline_precision`` and ``roofline_fraction``, raise the peak of a
    precision a cell beat (``peak.raised``) and flag that cell (in place; running it again changes
    nothing)."""
    measured = [c for c in cells if isinstance(c, MeasuredCell)]
    for cell in measured:
        cell.flags = [f for f in cell.flags if not f.startswith(FLAG)]
        cell.roofline_precision = compute_precision(cell.execution_precision, cell.precision)
    if peak is None:
        for cell in measured:
            cell.roofline_fraction = None
        return
    raises = _raises(measured, peak)
    peak.raised = [r for r, _ in raises] or None
    for cell in measured:
        top = peak.for_precision(cell.roofline_precision) if cell.roofline_precision else None
        cell.roofline_fraction = cell.gflops / top if cell.gflops and top else None
    for raised, cell in raises:
        unit = "GOP/s" if raised.precision == "int8" else "GFLOP/s"
        cell.flags.append(
            f"{FLAG}: {raised.gflops:.4g} {unit} in {raised.precision}, over the measured "
            f"{raised.measured_gflops:.4g}; this report counts every {raised.precision} cell against this cell's "
            "rate instead (the GEMM micro-benchmark missed a faster kernel, or ran on a busy machine: "
            "kiln bench --refresh-peak on a quiet one)"
        )
