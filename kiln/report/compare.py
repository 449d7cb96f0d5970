"""``kiln compare OLD NEW``: per-cell deltas and the regression gate (exit 4).

Cells match on (target, precision, batch, mode). A cell regresses when its p50 latency rises,
its throughput falls, or its size or peak memory grows by more than the threshold, or when its
accuracy drops by more than the gate the new run was configured with. A causal LM's cell
regresses on its decode tokens/s, inter-token latency p50 and TTFT p50 at each prompt length. Results from different
hardware are refused unless explicitly allowed, naming the fields that differ. ``portable_only``
gates only the figures that do not depend on the machine (size, accuracy, a cell that now fails):
what a release pipeline can still hold a run on another machine to; speed and memory are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.errors import ConfigError, RegressionError
from kiln.results import FailedCell, Fingerprint, MeasuredCell, Results


def parse_threshold(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        raise ConfigError(f"--max-regression {text!r}: expected a percentage such as 10% or a fraction such as 0.1")
    return value


def hardware_differences(old: Fingerprint, new: Fingerprint) -> list[str]:
    """Each hardware field that differs, with what changed (the flags by name)."""
    diffs = []
    before, after = old.hardware(), new.hardware()
    for key in before:
        a, b = before[key], after[key]
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diffs.append(f"{key} ({', '.join(changed)})")
            else:
                diffs.append(f"{key} ({a} -> {b})")
    return diffs


@dataclass
class Delta:
    cell: str
    metric: str
    old: float
    new: float
    change: float  # relative change, positive = worse
    regressed: bool


@dataclass
class Comparison:
    threshold: float
    deltas: list[Delta] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.regressed]

    def raise_on_regression(self) -> None:
        worst = self.regressions
        if worst:
            first = max(worst, key=lambda d: d.change)
            raise RegressionError(
                f"{len(worst)} figure(s) regressed beyond {self.threshold:.0%}, worst: {first.cell} {first.metric} "
                f"{first.old:.4g} -> {first.new:.4g} ({first.change:+.1%}); fix the regression or raise --max-regression"
            )


def _key(cell: MeasuredCell | FailedCell) -> tuple[str, int, str]:
    return cell.key, cell.batch, cell.mode


def _worse(old: float, new: float, higher_is_better: bool) -> float:
    if old == 0:
        return 0.0
    return (old - new) / old if higher_is_better else (new - old) / old


def _toolchain_note(old: Fingerprint, new: Fingerprint) -> str | None:
    a, b = old.toolchain, new.toolchain
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "toolchains differ: " + ", ".join(changed) if changed else None


def _speed(prev: MeasuredCell, cell: MeasuredCell) -> list[tuple[str, float, float, bool]]:
    """(figure, old, new, higher is better): a causal LM's decode tokens/s, inter-token latency
    and TTFT per prompt length both runs measured, else latency and throughput."""
    if prev.generation is None or cell.generation is None:
        return [
            ("p50 ms", prev.latency.p50_ms, cell.latency.p50_ms, False),
            ("items/s", prev.latency.throughput, cell.latency.throughput, True),
        ]
    before = {p.prompt_tokens: p for p in prev.generation.prompts}
    ttft = [
        (f"TTFT@{p.prompt_tokens} p50 ms", before[p.prompt_tokens].ttft.p50_ms, p.ttft.p50_ms, False)
        for p in cell.generation.prompts
        if p.prompt_tokens in before
    ]
    return [
        ("tok/s", prev.generation.tokens_per_s, cell.generation.tokens_per_s, True),
        ("ITL p50 ms", prev.latency.p50_ms, cell.latency.p50_ms, False),
        *ttft,
    ]


# Figures that do not depend on the machine that measured them.
PORTABLE = ("size",)


def _deltas(
    name: str, prev: MeasuredCell, cell: MeasuredCell, threshold: float, gate: float | None, portable_only: bool
) -> list[Delta]:
    figures = [
        *_speed(prev, cell),
        ("size", prev.size_bytes or 0, cell.size_bytes or 0, False),
        ("peak RSS", prev.peak_rss_bytes, cell.peak_rss_bytes, False),
    ]
    deltas = []
    for metric, a, b, higher in figures:
        change = _worse(a, b, higher)
        gated = metric in PORTABLE or not portable_only
        deltas.append(Delta(name, metric, a, b, change, gated and change > threshold))
    if prev.accuracy and cell.accuracy:
        a, b = prev.accuracy.value, cell.accuracy.value
        limit = gate if gate is not None else float("inf")
        deltas.append(Delta(name, f"accuracy ({cell.accuracy.metric})", a, b, a - b, a - b > limit))
    return deltas


def compare_results(
    old: Results, new: Results, threshold: float, allow_different_hardware: bool, portable_only: bool = False
) -> Comparison:
    diffs = hardware_differences(old.fingerprint, new.fingerprint)
    result = Comparison(threshold)
    if diffs:
        message = f"the runs are from different hardware ({old.fingerprint.id} vs {new.fingerprint.id}): " + "; ".join(
            diffs
        )
        if not allow_different_hardware:
            raise ConfigError(f"{message}; compare runs from one machine, or pass --allow-different-hardware")
        result.notes.append(message)
    if portable_only:
        result.notes.append("gating size, accuracy and failures only (--portable-only): speed and memory are shown")
    if note := _toolchain_note(old.fingerprint, new.fingerprint):
        result.notes.append(note)
    before = {_key(c): c for c in old.cells}
    matched = 0
    for cell in new.cells:
        prev = before.get(_key(cell))
        name = f"{cell.key}@b{cell.batch}"
        if prev is None:
            result.notes.append(f"{name}: new cell, nothing to compare")
            continue
        if not isinstance(prev, MeasuredCell) or not isinstance(cell, MeasuredCell):
            if isinstance(prev, MeasuredCell) and cell.status == "error":
                result.deltas.append(Delta(name, "status (now error)", 0, 1, 1.0, True))
            continue
        matched += 1
        result.deltas += _deltas(name, prev, cell, threshold, new.gates.max_metric_drop, portable_only)
    if matched == 0:
        result.notes.append("no cell of the new run matches a cell of the old run (target, precision, batch, mode)")
    return result


def print_comparison(comparison: Comparison) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from kiln.report import fmt

    table = Table(title=f"kiln compare (regression threshold {comparison.threshold:.0%})")
    for col in ("cell", "figure", "old", "new", "change", ""):
        table.add_column(col, justify="left" if col in ("cell", "figure", "") else "right")
    for d in comparison.deltas:
        verdict = "[red]REGRESSED[/red]" if d.regressed else ("better" if d.change < 0 else "")
        sign = "worse" if d.change > 0 else "better" if d.change < 0 else "same"
        change = f"{d.change:+.4f} drop" if d.metric.startswith("accuracy") else f"{abs(d.change):.1%} {sign}"
        show = fmt.size if d.metric in ("size", "peak RSS") else (lambda v: f"{v:.4g}")
        table.add_row(escape(d.cell), d.metric, show(d.old), show(d.new), change, verdict)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for note in comparison.notes:
        console.print(f"note: {escape(note)}")
