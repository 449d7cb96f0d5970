"""The one timing harness: every (target, precision, batch) cell in its own worker process,
targets interleaved over rounds so that machine drift hits them alike.

For each batch size the workers of all targets are started one after the other (so load times
do not overlap), then each round asks every live worker in turn for its share of the timed work;
odd rounds go in reverse order, so no target always runs first after a sibling's burst. Each round
thus times eager and every artifact within moments of each other, which gives one speed-up per
round; after the configured rounds, cells whose speed-up interval is still wide get more rounds
with eager (:mod:`kiln.bench.rounds`). A worker that fails to load, answers an error or dies
becomes an error cell; the run goes on.

:func:`_schedule` is the round scheduler, :class:`_Workers` the worker lifecycle (start, round,
renew, stop) and ``_Workers.fail`` the one failure path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kiln.bench.generation import fitting_prompts, generation_figures
from kiln.bench.load import snapshot, steal_between
from kiln.bench.process import DEFAULT_LAUNCH, Launch, WorkerFailed, WorkerProcess, malloc_environment
from kiln.bench.protocol import CellSpec, GenerationSpec, Ready, RoundAnswer, RoundCommand
from kiln.bench.rounds import BASELINE, continuing, too_stolen
from kiln.bench.stats import ratio_interval, round_figure, round_ratios, stalls, summarize
from kiln.config import BenchSettings
from kiln.manifest import Manifest
from kiln.results import FailedCell, MeasuredCell

Progress = Callable[[str], None]


@dataclass
class CellPlan:
    """One artifact to measure at every batch, or the reason it is not measured."""

    target: str
    precision: str
    key: str
    folder: Path | None = None
    manifest: Manifest | None = None
    skipped: str | None = None  # the target cannot run here (not an error)
    error: str | None = None  # the artifact could not be built


@dataclass
class _Timings:
    """What one live worker has answered so far."""

    worker: WorkerProcess
    seconds: list[float] = field(default_factory=list)
    figures: list[float] = field(default_factory=list)  # one per round (round_figure)
    faults: list[int] | None = field(default_factory=list)  # minor page faults per round; None: not counted
    warmup_iters: int = 0
    ttft: dict[int, list[float]] = field(default_factory=dict)  # generative cells, per prompt length
    itl: dict[int, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steal: list[float | None] = field(default_factory=list)  # per kept round (None off Linux)
    dropped: int = 0  # rounds timed, then dropped for the hypervisor's steal
    fresh: bool = True  # the worker has answered no round yet: its next one warms up in full
    lives: int = 1  # worker processes started for this cell (BenchSettings.processes)
    peak_rss: int = 0  # the highest peak RSS of the processes already stopped
    ready: Ready | None = None  # the first process's load figures (the cell reports those)

    def __post_init__(self) -> None:
        self.ready = self.ready or self.worker.ready


def _identity(plan: CellPlan, batch: int, settings: BenchSettings) -> dict[str, Any]:
    """The fields that name a cell, measured or not."""
    return {
        "key": plan.key,
        "target": plan.target,
        "precision": plan.precision,
        "batch": batch,
        "mode": settings.mode,
        "threads": settings.threads,
    }


def _failed(plan: CellPlan, batch: int, settings: BenchSettings, status: str, reason: str) -> FailedCell:
    return FailedCell(**_identity(plan, batch, settings), status=status, reason=reason)


def _spec(plan: CellPlan, batch: int, settings: BenchSettings, prompts: list[int] | None) -> CellSpec:
    assert settings.threads is not None and settings.requests is not None
    generation = None
    if prompts is not None:
        assert settings.new_tokens is not None
        generation = GenerationSpec(prompt_tokens=prompts, new_tokens=settings.new_tokens)
    return CellSpec(
        artifact=str(plan.folder),
        batch=batch,
        threads=settings.threads,
        mode=settings.mode,
        requests=settings.requests,
        generation=generation,
    )


def _commands(settings: BenchSettings) -> tuple[RoundCommand, RoundCommand]:
    """The first round's command and the later rounds'. The first warms up by time and count
    (kernels chosen, memory allocated); later rounds only refill caches and wake the runtime's
    threads: one run and up to a quarter of the round's timed share. A causal LM's run is one
    generation per prompt length: it warms up with one, and ``generations`` (not ``min_iters``)
    sets the timed count. Rounds past ``rounds`` (the adaptive ones) are later rounds too."""
    runs = settings.min_iters if settings.generations is None else settings.generations
    share = settings.min_seconds / settings.rounds
    first = RoundCommand(
        warmup_seconds=settings.warmup_seconds,
        warmup_iters=settings.warmup_iters if settings.generations is None else min(1, settings.warmup_iters),
        min_seconds=share,
        min_iters=math.ceil(runs / settings.rounds),
    )
    later = first.model_copy(
        update={
            "warmup_iters": min(1, settings.warmup_iters),
            "warmup_seconds": min(settings.warmup_seconds, share / 4),
        }
    )
    return first, later


def run_cells(
    plans: list[CellPlan], settings: BenchSettings, progress: Progress = lambda _: None, launch: Launch = DEFAULT_LAUNCH
) -> list[MeasuredCell | FailedCell]:
    """Measure every plan at every batch; one cell per (plan, batch), in that order, before the
    analysis (:func:`kiln.bench.analysis.enrich`) adds what the manifests and FLOPs say.

    ``settings`` must be resolved (:meth:`BenchSettings.resolve`): threads and requests set.
    """
    if settings.threads is None or settings.requests is None:
        raise ValueError("run_cells needs resolved settings (BenchSettings.resolve): threads and requests set")
    launch = replace(launch, env={**malloc_environment(settings.malloc), **launch.env})
    cells: list[MeasuredCell | FailedCell] = []
    for batch in settings.batches:
        workers = _Workers(plans, batch, settings, launch, progress)
        try:
            for plan in plans:
                workers.start(plan)
            _schedule(workers)
            workers.stop()
        finally:
            workers.close()
        cells.extend(workers.done[plan.key] for plan in plans)
    return cells


def _schedule(workers: _Workers) -> None:
    """The round scheduler: each round asks every active cell in turn for its share of the timed
    work (odd rounds in reverse order), drops a round the hypervisor stole from, and starts fresh
    processes every ``rounds / processes`` rounds, until :func:`continuing` says the intervals
    are narrow enough or the budget is spent."""
    settings, batch, progress = workers.settings, workers.batch, workers.progress
    items = batch * (settings.requests if settings.mode == "throughput" else 1)
    r, dropped, active, started, life_from = 0, 0, list(workers.live), time.monotonic(), 0
    per_life, reloading = math.ceil(settings.rounds / settings.processes), 0.0
    while active:
        if settings.processes > 1 and r - life_from >= per_life:
            life_from, stopped = r, time.monotonic()
            active = workers.renew(active, r)
            reloading += time.monotonic() - stopped  # max_seconds budgets rounds, not loading
        answers: dict[str, RoundAnswer] = {}
        before = snapshot()
        for key in active if r % 2 == 0 else reversed(active):
            progress(f"batch {batch}: round {r + 1}/{_of(r, settings)}: {key}")
            if (answer := workers.round(key)) is not None:
                answers[key] = answer
        stolen = steal_between(before, snapshot())
        if too_stolen(stolen, dropped, settings):
            assert stolen is not None
            dropped += 1
            progress(f"batch {batch}: round {r + 1} dropped: the hypervisor took {stolen:.1%} (steal)")
            for key, answer in answers.items():
                workers.live[key].warmup_iters += answer.warmup_iters
                workers.live[key].dropped += 1
        else:
            for key, answer in answers.items():
                _add(workers.live[key], answer, items, settings)
                workers.live[key].steal.append(stolen)
            r += 1
        spent = time.monotonic() - started - reloading
        active = continuing({k: t.figures for k, t in workers.live.items()}, r, settings, spent)


class _Workers:
    """The worker lifecycle of one batch size: each cell's worker started, asked for rounds,
    renewed, stopped and closed; ``done`` collects the cells as they end, in any way."""

    def __init__(
        self, plans: list[CellPlan], batch: int, settings: BenchSettings, launch: Launch, progress: Progress
    ) -> None:
        self.plans = {plan.key: plan for plan in plans}
        self.batch, self.settings, self.launch, self.progress = batch, settings, launch, progress
        self.first, self.later = _commands(settings)
        self.live: dict[str, _Timings] = {}
        self.specs: dict[str, CellSpec] = {}
        self.done: dict[str, MeasuredCell | FailedCell] = {}

    def start(self, plan: CellPlan) -> None:
        """Start the plan's worker, or record why it has none (skipped, not built, no prompt fits)."""
        if plan.skipped or plan.error:
            status = "skipped" if plan.skipped else "error"
            self.done[plan.key] = _failed(plan, self.batch, self.settings, status, plan.skipped or plan.error or "")
            return
        prompts, notes = fitting_prompts(plan.manifest, self.settings)
        if prompts == []:
            self.done[plan.key] = _failed(plan, self.batch, self.settings, "skipped", "; ".join(notes))
            return
        self.progress(f"batch {self.batch}: loading {plan.key}")
        self.specs[plan.key] = _spec(plan, self.batch, self.settings, prompts)
        try:
            self.live[plan.key] = _Timings(WorkerProcess(self.specs[plan.key], self.launch), notes=notes)
        except WorkerFailed as err:
            self.fail(plan.key, err)

    def round(self, key: str) -> RoundAnswer | None:
        """One round's answer from the cell's worker (a fresh one warms up in full); ``None`` when it failed."""
        timings = self.live[key]
        try:
            answer = timings.worker.round(self.first if timings.fresh else self.later)
        except WorkerFailed as err:
            self.fail(key, err)
            return None
        timings.fresh = False
        return answer

    def renew(self, keys: list[str], r: int) -> list[str]:
        """A fresh process for each of ``keys``, one after the other; what they timed stays.
        Returns the keys whose new worker started."""
        for key in keys:
            self.progress(f"batch {self.batch}: round {r + 1}: a fresh process for {key}")
            timings = self.live[key]
            try:
                timings.peak_rss = max(timings.peak_rss, timings.worker.stop().peak_rss_bytes)
                timings.worker.close()
                timings.worker = WorkerProcess(self.specs[key], self.launch)
            except WorkerFailed as err:
                self.fail(key, err)
                continue
            timings.fresh, timings.lives = True, timings.lives + 1
        return [key for key in keys if key in self.live]

    def stop(self) -> None:
        """Stop every live worker: its cell is measured, then the speed-up intervals are added."""
        for key, timings in list(self.live.items()):
            try:
                peak_rss = max(timings.peak_rss, timings.worker.stop().peak_rss_bytes)
            except WorkerFailed as err:
                self.fail(key, err)
                continue
            self.done[key] = _measured(self.plans[key], self.batch, self.settings, timings, peak_rss)
        _add_intervals(self.done, self.live, self.settings)

    def fail(self, key: str, err: WorkerFailed) -> None:
        """The failure path: a worker that failed to start, answered an error or died makes its
        cell an error cell and leaves the rounds; the run goes on."""
        self.done[key] = _failed(self.plans[key], self.batch, self.settings, "error", str(err))
        if (timings := self.live.pop(key, None)) is not None:
            timings.worker.close()

    def close(self) -> None:
        for timings in self.live.values():
            timings.worker.close()


def _of(done: int, settings: BenchSettings) -> str:
    """The round count shown in progress: the fixed rounds, then "more" while adapting."""
    return str(settings.rounds) if done < settings.rounds else f"{settings.max_rounds} at most"


def _add(timings: _Timings, answer: RoundAnswer, items: int, settings: BenchSettings) -> None:
    timings.seconds.extend(answer.seconds)
    timings.figures.append(round_figure(answer.seconds, items, settings.mode))
    timings.warmup_iters += answer.warmup_iters
    if timings.faults is not None:
        timings.faults = None if answer.page_faults is None else [*timings.faults, answer.page_faults]
    for length, values in answer.ttft.items():
        timings.ttft.setdefault(length, []).extend(values)
    for length, values in answer.itl.items():
        timings.itl.setdefault(length, []).extend(values)


def _add_intervals(
    done: dict[str, MeasuredCell | FailedCell], live: dict[str, _Timings], settings: BenchSettings
) -> None:
    """Each measured cell's per-round speed-ups over eager of the same batch, and their interval."""
    base = done.get(BASELINE)
    if not isinstance(base, MeasuredCell):
        return
    for key, cell in done.items():
        if key == BASELINE or not isinstance(cell, MeasuredCell):
            continue
        ratios = round_ratios(live[BASELINE].figures, live[key].figures, settings.mode)
        if not ratios:
            continue
        found = ratio_interval(ratios)
        cell.speedup_rounds = ratios
        cell.speedup_vs_eager = found.value
        cell.speedup_ci_low, cell.speedup_ci_high, cell.speedup_ci_level = found.low, found.high, found.level


def _measured(plan: CellPlan, batch: int, settings: BenchSettings, timings: _Timings, peak_rss: int) -> MeasuredCell:
    assert settings.threads is not None and settings.requests is not None
    ready = timings.ready
    assert ready is not None
    items = batch * (settings.requests if settings.mode == "throughput" else 1)
    return MeasuredCell(
        **_identity(plan, batch, settings),
        latency=summarize(timings.seconds, items, settings.cv_threshold),
        first_inference_ms=ready.first_ms,
        load_s=ready.load_s,
        import_s=ready.import_s,
        warmup_iters=timings.warmup_iters,
        peak_rss_bytes=peak_rss,
        rss_before_load_bytes=ready.rss_before_load_bytes,
        runtime=ready.info,
        generation=(
            generation_figures(timings.ttft, timings.itl, settings, timings.notes) if settings.new_tokens else None
        ),
        rounds=len(timings.figures),
        stalls=stalls(timings.seconds),
        threading=ready.threading,
        round_steal=[round(v, 4) for v in timings.steal] if None not in timings.steal else None,  # type: ignore[misc]
        rounds_dropped=timings.dropped if settings.max_round_steal is not None else None,
        processes=timings.lives,
        page_faults_per_run=round(sum(timings.faults) / len(timings.seconds), 1) if timings.faults else None,
    )
