"""From measured cells to the figures a report shows: speed-ups, roofline fractions, model quality,
and the flags that catch wasted optimizations."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.bench.stats import STALL_FLAG_SHARE
from kiln.manifest import Manifest
from kiln.report.roofline import count_against_peak
from kiln.results import Accuracy, FailedCell, MeasuredCell, Peak

Cell = MeasuredCell | FailedCell


def _describe(cell: Cell, manifest: Manifest | None) -> None:
    """What the build recorded: size, quality, and the precision the runtime executes."""
    ran_as = cell.runtime.execution_precision if isinstance(cell, MeasuredCell) else None
    if manifest is None:
        cell.execution_precision = ran_as
        return
    gate, parity = manifest.gate, manifest.gate.parity
    cell.size_bytes = manifest.size_bytes
    cell.member = manifest.member
    if manifest.qat is not None:
        cell.ptq_metric, cell.qat_metric = manifest.qat.ptq_metric, manifest.qat.qat_metric
    if (distilled := manifest.distillation) is not None:
        cell.teacher_metric = distilled.teacher_metric
        cell.teacher_params, cell.student_params = distilled.teacher_params, distilled.student_params
    # What the runtime reported in the worker wins over what the build recorded.
    cell.execution_precision = ran_as or manifest.execution.execution_precision
    cell.parity_passed = parity.passed if parity else None
    cell.parity_worst = parity.worst if parity else None
    cell.accuracy = Accuracy.model_validate(gate.evaluation.model_dump()) if gate.evaluation else None
    cell.simulated = gate.simulated


def enrich(
    cells: list[Cell],
    manifests: Mapping[str, Manifest | None],
    flops: Mapping[str, Mapping[int, int]],
    peak: Peak | None,
    cv_threshold: float,
    ci_target: float | None = None,
) -> list[Cell]:
    """Add per-cell size, quality, FLOPs, fraction of peak (counted against the precision the cell
    executes: :mod:`kiln.report.roofline`), speed-up vs eager and flags (in place).

    ``flops`` maps each cell key to FLOPs per batch size (pruned variants count their own program).
    """
    eager = {c.batch: c for c in cells if c.key == "eager-fp32" and isinstance(c, MeasuredCell)}
    for cell in cells:
        _describe(cell, manifests.get(cell.key))
        cell.flops = flops.get(cell.key, {}).get(cell.batch)
        if not isinstance(cell, MeasuredCell):
            continue
        lat = cell.latency
        if cell.flops:
            cell.gflops = cell.flops * (lat.throughput / cell.batch) / 1e9  # forward passes/s x FLOPs
        base = eager.get(cell.batch)
        if base is not None and cell.speedup_rounds is None:
            # No per-round ratios (eager itself, or cells measured without rounds): two p50s.
            if cell.mode == "throughput":
                cell.speedup_vs_eager = lat.throughput / base.latency.throughput
            else:
                cell.speedup_vs_eager = base.latency.p50_ms / lat.p50_ms
        if lat.unstable:
            cell.flags.append(
                f"unstable: CV {lat.cv:.1%} is over the {cv_threshold:.0%} threshold; "
                "quiet the machine or raise --min-seconds (the p50 and the speed-up's interval are robust to it)"
            )
        _flag_timing(cell, ci_target)
        if cell.execution_precision and cell.execution_precision != cell.precision:
            cell.flags.append(
                f"execution precision: requested {cell.precision}, the runtime executes {cell.execution_precision}"
            )
    count_against_peak(cells, peak)
    _flag_wasted(cells, manifests)
    return cells


def _flag_timing(cell: MeasuredCell, ci_target: float | None) -> None:
    """Stalls above their share, and a speed-up whose interval stayed wider than the target."""
    st = cell.stalls
    if st is not None and st.share > STALL_FLAG_SHARE:
        cell.flags.append(
            f"stalls: {st.count} of {cell.latency.samples} samples ({st.share:.1%}) took over {st.factor:g}x the "
            f"median (worst {st.worst_ms:.3g} ms): threads preempted by other work; the p50 and the speed-up "
            "are robust to them, the mean, CV and p99 are not"
        )
    low, high, value = cell.speedup_ci_low, cell.speedup_ci_high, cell.speedup_vs_eager
    if ci_target is not None and low is not None and high is not None and value:
        half = (high - low) / (2 * value)
        if half > ci_target:
            cell.flags.append(
                f"wide interval: the speed-up is {value:.2f}x [{low:.2f}-{high:.2f}], +-{half:.1%} after "
                f"{cell.rounds} rounds, over the +-{ci_target:.1%} target; quiet the machine, or raise max_rounds or max_seconds"
            )


def _compressed(cell: Cell, manifest: Manifest | None) -> bool:
    return cell.precision != "fp32" or (manifest is not None and manifest.prune is not None)


def _flag_wasted(cells: list[Cell], manifests: Mapping[str, Manifest | None]) -> None:
    """A quantized or compressed artifact slower than the fp32 artifact of the same target."""
    index = {(c.target, c.key, c.batch): c for c in cells}
    for cell in cells:
        if not isinstance(cell, MeasuredCell) or not _compressed(cell, manifests.get(cell.key)):
            continue
        sibling = index.get((cell.target, f"{cell.target}-fp32", cell.batch))
        if not isinstance(sibling, MeasuredCell) or sibling is cell:
            continue
        mine, theirs = cell.latency, sibling.latency
        slower = mine.throughput < theirs.throughput if cell.mode == "throughput" else mine.p50_ms > theirs.p50_ms
        if slower:
            cell.flags.append(
                f"wasted optimization: {cell.key} is slower than {sibling.key} at batch {cell.batch} "
                f"(p50 {mine.p50_ms:.3g} ms vs {theirs.p50_ms:.3g} ms)"
            )
