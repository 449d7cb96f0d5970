"""The one timing harness: every (target, precision, batch) cell in its own worker process,
targets interleaved over rounds so that machine drift hits them alike.

For each batch size the workers of all targets are started one after the other (so load times
do not overlap), then each round asks every live worker in turn for its share of the timed work;
odd rounds go in reverse order, so no target always runs first after a sibling's burst. A worker
that fails to load, answers an error or dies becomes an error cell; the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.bench.process import WORKER_COMMAND, WorkerFailed, WorkerProcess
from kiln.bench.stats import DEFAULT_CV_THRESHOLD, summarize

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """How cells are measured; ``min_seconds`` and ``min_iters`` are per cell, over all rounds."""

    batches: tuple[int, ...] = (1,)
    threads: int = 1
    mode: str = "latency"  # latency | throughput
    requests: int = 2  # requests in flight per timed sample in throughput mode
    min_seconds: float = 2.0
    min_iters: int = 20
    warmup_seconds: float = 0.5
    warmup_iters: int = 5
    rounds: int = 2
    cv_threshold: float = DEFAULT_CV_THRESHOLD
    worker_command: tuple[str, ...] = WORKER_COMMAND
    timeout: float = 600.0  # seconds a worker may stay silent before it is stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": list(self.batches),
            "threads": self.threads,
            "mode": self.mode,
            "requests": self.requests if self.mode == "throughput" else 1,
            "min_seconds": self.min_seconds,
            "min_iters": self.min_iters,
            "warmup_seconds": self.warmup_seconds,
            "warmup_iters": self.warmup_iters,
            "rounds": self.rounds,
            "cv_threshold": self.cv_threshold,
        }


@dataclass
class CellPlan:
    """One artifact to measure at every batch, or the reason it is not measured."""

    target: str
    precision: str
    key: str
    folder: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # the target cannot run here (not an error)
    error: str | None = None  # the artifact could not be built


def _base_cell(plan: CellPlan, batch: int, options: BenchOptions) -> dict[str, Any]:
    return {
        "key": plan.key,
        "target": plan.target,
        "precision": plan.precision,
        "batch": batch,
        "mode": options.mode,
        "threads": options.threads,
        "status": "ok",
        "reason": None,
    }


def _worker_spec(plan: CellPlan, batch: int, options: BenchOptions) -> dict[str, Any]:
    return {
        "artifact": str(plan.folder),
        "batch": batch,
        "threads": options.threads,
        "mode": options.mode,
        "requests": options.requests,
        "seed": 0,
    }


def run_cells(
    plans: list[CellPlan], options: BenchOptions, progress: Progress = lambda _: None
) -> list[dict[str, Any]]:
    """Measure every plan at every batch; returns one raw cell dict per (plan, batch)."""
    cells: list[dict[str, Any]] = []
    per_round = {
        "cmd": "round",
        "warmup_seconds": options.warmup_seconds,
        "warmup_iters": options.warmup_iters,
        "min_seconds": options.min_seconds / options.rounds,
        "min_iters": math.ceil(options.min_iters / options.rounds),
    }
    for batch in options.batches:
        live: dict[str, tuple[WorkerProcess, dict[str, Any]]] = {}
        batch_cells: dict[str, dict[str, Any]] = {}
        for plan in plans:
            cell = batch_cells[plan.key] = _base_cell(plan, batch, options)
            if plan.skipped or plan.error:
                cell.update(status="skipped" if plan.skipped else "error", reason=plan.skipped or plan.error)
                continue
            progress(f"batch {batch}: loading {plan.key}")
            try:
                worker = WorkerProcess(_worker_spec(plan, batch, options), options.worker_command, options.timeout)
            except WorkerFailed as err:
                cell.update(status="error", reason=str(err))
                continue
            live[plan.key] = (worker, {"ready": worker.ready, "seconds": [], "warmup_iters": 0})
        try:
            for r in range(options.rounds):
                order = list(live) if r % 2 == 0 else list(reversed(live))
                # The first round warms up by time and count (kernels chosen, memory allocated);
                # later rounds only refill caches, by time, with at least one run.
                command = per_round if r == 0 else {**per_round, "warmup_iters": min(1, options.warmup_iters)}
                for key in order:
                    progress(f"batch {batch}: round {r + 1}/{options.rounds}: {key}")
                    worker, raw = live[key]
                    try:
                        answer = worker.send(command)
                    except WorkerFailed as err:
                        batch_cells[key].update(status="error", reason=str(err))
                        worker.close()
                        del live[key]
                        continue
                    raw["seconds"].extend(answer["seconds"])
                    raw["warmup_iters"] += answer["warmup_iters"]
            for key, (worker, raw) in live.items():
                try:
                    raw["peak_rss_bytes"] = worker.stop()["peak_rss_bytes"]
                except WorkerFailed as err:
                    batch_cells[key].update(status="error", reason=str(err))
                    continue
                _finish(batch_cells[key], raw, batch, options)
        finally:
            for worker, _ in live.values():
                worker.close()
        cells.extend(batch_cells[plan.key] for plan in plans)
    return cells


def _finish(cell: dict[str, Any], raw: dict[str, Any], batch: int, options: BenchOptions) -> None:
    ready = raw["ready"]
    items = batch * (options.requests if options.mode == "throughput" else 1)
    cell.update(
        latency=summarize(raw["seconds"], items, options.cv_threshold),
        first_inference_ms=ready["first_ms"],
        load_s=ready["load_s"],
        import_s=ready["import_s"],
        warmup_iters=raw["warmup_iters"],
        peak_rss_bytes=raw["peak_rss_bytes"],
        rss_before_load_bytes=ready["rss_before_load_bytes"],
        runtime=ready["info"],
    )
