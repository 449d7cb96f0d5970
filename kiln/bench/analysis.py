"""From measured cells to the figures a report shows: speed-ups, roofline fractions, model quality,
and the flags that catch wasted optimizations."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.manifest import Manifest
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
) -> list[Cell]:
    """Add per-cell size, quality, FLOPs, roofline fraction, speed-up vs eager and flags (in place).

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
            top = peak.measured.for_precision(cell.precision) if peak else None
            cell.roofline_fraction = cell.gflops / top if top else None
        base = eager.get(cell.batch)
        if base is not None:
            if cell.mode == "throughput":
                cell.speedup_vs_eager = lat.throughput / base.latency.throughput
            else:
                cell.speedup_vs_eager = base.latency.p50_ms / lat.p50_ms
        if lat.unstable:
            cell.flags.append(
                f"unstable: CV {lat.cv:.1%} is over the {cv_threshold:.0%} threshold; "
                "quiet the machine or raise --min-seconds"
            )
        if cell.execution_precision and cell.execution_precision != cell.precision:
            cell.flags.append(
                f"execution precision: requested {cell.precision}, the runtime executes {cell.execution_precision}"
            )
    _flag_wasted(cells, manifests)
    return cells


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
