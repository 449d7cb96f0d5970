"""What a technique buys and costs, from the cells of one run: an ensemble against each of its
members, quantization-aware training against post-training quantization, a distilled student
against its teacher.

Each target and precision the ensemble was built for gets one row for the ensemble and one per
member measured alone: the task metric, the p50 latency and the size, and the ensemble's ratio to
the member for each (latency and size above 1: the ensemble is slower and bigger; the metric's
difference: what the ensemble gives back).
"""

from __future__ import annotations

from kiln.report import fmt
from kiln.results import MeasuredCell, Results

COLUMNS = (
    "target",
    "model",
    "metric",
    "ensemble's gain",
    "p50 ms",
    "ensemble / member latency",
    "size",
    "ensemble / member size",
)


def _base(key: str) -> str:
    return key.split("-member-")[0]


def has_members(results: Results) -> bool:
    return any(c.member for c in results.cells)


def rows(results: Results, batch: int) -> list[list[str]]:
    """The ensemble against its members at ``batch``: one block of rows per ensemble artifact."""
    cells = [c for c in results.batch(batch) if isinstance(c, MeasuredCell)]
    ensembles = {c.key: c for c in cells if not c.member}
    out: list[list[str]] = []
    for key, whole in ensembles.items():
        members = [c for c in cells if c.member and _base(c.key) == key]
        if not members:
            continue
        metric = whole.accuracy.value if whole.accuracy else None
        out.append(
            [key, "ensemble", fmt.num(metric), "", fmt.ms(whole.latency.p50_ms), "", fmt.size(whole.size_bytes), ""]
        )
        for member in members:
            value = member.accuracy.value if member.accuracy else None
            gain = f"{metric - value:+.4f}" if metric is not None and value is not None else "-"
            latency = whole.latency.p50_ms / member.latency.p50_ms if member.latency.p50_ms else None
            size = whole.size_bytes / member.size_bytes if whole.size_bytes and member.size_bytes else None
            out.append(
                [
                    "",
                    member.member or "",
                    fmt.num(value),
                    gain,
                    fmt.ms(member.latency.p50_ms),
                    fmt.ratio(latency),
                    fmt.size(member.size_bytes),
                    fmt.ratio(size),
                ]
            )
    return out


LEGEND = (
    "metric: the evaluation metric each artifact's build measured (higher is better); ensemble's gain: the "
    "ensemble's metric minus the member's; ensemble / member: the ensemble's p50 latency and size over the "
    "member's, both measured in this run."
)


def _metric(value: float | None) -> str:
    """Four decimals: QAT and PTQ of an int8 model differ in the third."""
    return "-" if value is None else f"{value:.4f}"


QAT_COLUMNS = ("artifact", "eager metric", "PTQ (PyTorch)", "QAT (PyTorch)", "artifact metric", "QAT's gain")


def qat_rows(results: Results, batch: int) -> list[list[str]]:
    """Each quantization-aware artifact: PTQ's and QAT's metric on the same quantizer, and its own."""
    out = []
    for cell in results.batch(batch):
        if cell.qat_metric is None and cell.ptq_metric is None:
            continue
        acc = cell.accuracy
        gain = (
            cell.qat_metric - cell.ptq_metric if cell.qat_metric is not None and cell.ptq_metric is not None else None
        )
        out.append(
            [
                cell.key,
                _metric(acc.eager if acc else None),
                _metric(cell.ptq_metric),
                _metric(cell.qat_metric),
                _metric(acc.value if acc else None),
                "-" if gain is None else f"{gain:+.4f}",
            ]
        )
    return out


QAT_LEGEND = (
    "PTQ / QAT (PyTorch): the task metric of the model quantized after training and of the same model trained "
    "with the fake quantizers in the loop, both on the target's own quantizer and evaluated in PyTorch; artifact "
    "metric: the built artifact's, measured by its gate on its runtime."
)


def distillation_line(results: Results) -> str | None:
    """One line: the teacher's metric and size against the distilled student's."""
    cell = next((c for c in results.cells if c.teacher_params is not None), None)
    if cell is None:
        return None
    eager = next((c for c in results.cells if c.key == "eager-fp32" and c.accuracy), None)
    student = eager.accuracy.value if eager and eager.accuracy else None
    share = (cell.student_params or 0) / cell.teacher_params if cell.teacher_params else None
    return (
        f"Distilled from a teacher of {cell.teacher_params:,} parameters (metric {fmt.num(cell.teacher_metric)}) into "
        f"this student of {cell.student_params:,} ({fmt.pct(share)} of the teacher's), metric {fmt.num(student)} "
        "in eager."
    )
