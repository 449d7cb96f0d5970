"""``kiln bench --profile`` in the reports: one table per artifact (markdown, HTML), a stacked bar
per artifact by operator kind (HTML) and one line per artifact (console)."""

from __future__ import annotations

from kiln.report import svg
from kiln.results import MeasuredCell, OpProfile, Results

COLUMNS = ("kind", "precision", "ISA", "ops", "ms/run", "share")
LEGEND = (
    "Each artifact run again after the timed rounds under its runtime's own profiler, at the first batch: "
    "time per run by operator kind and the precision it ran in (ISA where the runtime names it), summed over the "
    "operators the profiler reports (its own overhead included, so shares matter more than milliseconds). "
    "reorders: layout conversions (OpenVINO Reorder, ONNX Runtime ReorderInput/ReorderOutput, Transpose). "
    "fp32 ops: in a quantized artifact, the share of compute operators that ran in fp32 (quantize/dequantize "
    "and reorders apart)."
)


def profiled(results: Results) -> list[MeasuredCell]:
    """The cells that carry a profile, in the results' order."""
    return [c for c in results.cells if isinstance(c, MeasuredCell) and c.profile is not None]


def label(cell: MeasuredCell) -> str:
    return f"{cell.key} (batch {cell.batch})"


def rows(profile: OpProfile) -> list[list[str]]:
    return [[r.kind, r.precision, r.isa or "-", str(r.ops), f"{r.ms:.3g}", f"{r.share:.0%}"] for r in profile.rows]


def caption(profile: OpProfile) -> str:
    """What the table's rows leave out: the source, the total, the precision and layout shares."""
    if profile.unavailable:
        return f"No profile: {profile.unavailable}."
    shares = ", ".join(f"{p} {s:.0%}" for p, s in profile.precision_shares.items())
    parts = [
        f"{profile.source}, {profile.runs} runs, {profile.total_ms:.3g} ms of operator time per run",
        f"by precision: {shares}",
        f"reorders: {profile.layout_share:.0%} ({profile.layout_ops} ops)",
    ]
    if profile.fp32_share is not None:
        left = ", ".join(f"{k} ×{n}" for k, n in profile.fp32_ops.items()) or "none"
        parts.append(f"fp32 ops: {profile.fp32_share:.0%} ({left})")
    return "; ".join(parts) + "."


def console_lines(results: Results) -> list[str]:
    """One line per profiled artifact: ``openvino int8: 62 % FullyConnected (int8), 18 % fp32 ops, 4 % reorders``."""
    return [summary_line(f"{c.target} {c.precision}", c.profile) for c in profiled(results) if c.profile]


def summary_line(label: str, profile: OpProfile) -> str:
    """One console line: ``openvino int8: 62 % Convolution (int8), 18 % fp32 ops, 4 % reorders``."""
    if profile.unavailable:
        return f"{label}: no profile ({profile.unavailable})"
    top = next((r for r in profile.rows if r.kind != "other"), None)
    parts = [f"{top.share:.0%} {top.kind} ({top.precision})"] if top else []
    if profile.fp32_share is not None:
        parts.append(f"{profile.fp32_share:.0%} fp32 ops")
    parts.append(f"{profile.layout_share:.0%} reorders")
    return f"{label}: " + ", ".join(parts)


def plot(results: Results) -> str | None:
    """A stacked bar per artifact: its time's shares by operator kind, one color per kind."""
    cells = [c for c in profiled(results) if c.profile and c.profile.rows]
    if not cells:
        return None
    kinds: dict[str, str] = {}
    bars = []
    for cell in cells:
        assert cell.profile is not None
        by_kind: dict[str, float] = {}
        for row in cell.profile.rows:
            by_kind[row.kind] = by_kind.get(row.kind, 0.0) + row.share
        for kind in by_kind:
            kinds.setdefault(kind, "#bbb" if kind == "other" else svg.color(len(kinds)))
        bars.append((label(cell), [(kind, share, kinds[kind]) for kind, share in by_kind.items()]))
    return svg.stacked_bars("profile", "Where the time goes: share of operator time by kind (--profile)", bars)
