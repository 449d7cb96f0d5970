"""One search's state and its two actions: build and gate a variant, and measure artifacts
beside eager in one ``kiln bench`` run. The stages (:mod:`kiln.tune.search`) decide what to
build and measure; this module is the only one that calls ``kiln build`` and ``kiln bench``."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.bench.run import BenchRun, bench
from kiln.config import BenchSettings, KilnConfig
from kiln.manifest import Manifest
from kiln.pipeline.build import build, one_target, plan
from kiln.pipeline.isolate import IsolatedFailure, run_isolated
from kiln.results import Fingerprint, MeasuredCell
from kiln.store import atomic_dir
from kiln.tune.records import Candidate, Measurement, Objective, Run, Stage
from kiln.tune.space import Variant, request_counts

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TuneSettings:
    """What ``kiln tune`` searches for and within which bounds."""

    objective: Objective = "latency"
    max_metric_drop: float | None = None  # None: the config's [gates].max_metric_drop
    batch: int | None = None  # None: the first of [bench].batch
    threads: tuple[int, ...] = ()  # (): 1 .. physical cores
    targets: tuple[str, ...] = ()  # NAME[:PRECISION] to search among; (): every target here
    budget_minutes: float = 30.0
    max_builds: int | None = None  # artifacts built or reused, eager included
    out: Path = Path("build")
    # A target (or setting) is searched further only when its cost is within this factor of the
    # best seen so far: a runtime 1.5x slower at fp32 rarely wins once both are quantized.
    keep_within: float = 1.5
    front_for_threads: int = 3  # how many of the front's fastest are tried at other thread counts


@dataclass
class Session:
    config: KilnConfig
    settings: TuneSettings
    fingerprint: Fingerprint
    batch: int
    threads: int  # the default thread count of every stage but "threads"
    progress: Progress
    started: float = field(default_factory=time.monotonic)
    candidates: list[Candidate] = field(default_factory=list)
    artifacts: dict[str, Candidate] = field(default_factory=dict)  # by artifact id, at the default setting
    variants: dict[str, Variant] = field(default_factory=dict)  # by artifact id
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exhausted: bool = False
    builds: int = 0

    @property
    def model_dir(self) -> Path:
        return self.settings.out / self.config.model.name

    @property
    def workspace(self) -> Path:
        return self.model_dir / "tune"

    @property
    def mode(self) -> str:
        return "latency" if self.settings.objective == "latency" else "throughput"

    @property
    def requests(self) -> int:
        return request_counts(self.threads, self.mode)[0]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def over_budget(self, building: bool = False) -> bool:
        over = self.elapsed() > 60 * self.settings.budget_minutes
        cap = self.settings.max_builds
        if building and cap is not None and self.builds >= cap:
            over = True
        self.exhausted |= over
        return over


def setting_id(threads: int, requests: int, mode: str) -> str:
    return f"t{threads}" + (f"r{requests}" if mode == "throughput" else "")


def _link_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def register(s: Session, variant: Variant) -> Candidate:
    """The candidate of a variant at the default setting, before anything is built."""
    target = variant.target
    cand = Candidate(
        id=f"{variant.id}@{setting_id(s.threads, s.requests, s.mode)}",
        artifact=variant.id,
        target=target.name,
        precision=target.precision,
        options=dict(target.options),
        threads=s.threads,
        requests=s.requests,
        stage=variant.stage,  # type: ignore[arg-type]
        status="not tried",
    )
    s.artifacts[variant.id], s.variants[variant.id] = cand, variant
    s.candidates.append(cand)
    return cand


def build_one(s: Session, variant: Variant) -> Candidate:
    """Build and gate one variant (or reuse its artifact when its cache key still matches)."""
    target = variant.target
    cand = register(s, variant)
    if s.over_budget(building=True):
        cand.reason = "the budget ran out before it was built"
        return cand
    s.builds += 1
    one = one_target(s.config, target)
    folder = s.workspace / "artifacts" / variant.id
    key = plan(one, s.settings.out).targets[target.key].key
    manifest = Manifest.find(folder)
    if manifest is None or manifest.cache_key != key:
        s.progress(f"building {variant.id}")
        try:  # a child per build: toolchains keep what they load until their process ends
            built, error = run_isolated(
                build_in_child, one, s.settings.out, progress=lambda msg: s.progress(f"{variant.id}: {msg}")
            )
        except IsolatedFailure as err:
            built, error = None, str(err)
        if built is None:
            cand.status, cand.reason = "failed", f"build failed: {error}"
            return cand
        with atomic_dir(folder) as tmp:
            shutil.copytree(s.model_dir / target.key, tmp, copy_function=_link_copy, dirs_exist_ok=True)
        manifest = built
    _describe(cand, manifest)
    return cand


def build_in_child(config: KilnConfig, out: Path, progress: Progress) -> tuple[Manifest | None, str | None]:
    """One variant's build, in the child :func:`kiln.pipeline.isolate.run_isolated` spawned: its manifest,
    or why it failed."""
    result = build(config, out, progress)[0]
    return result.manifest, None if result.manifest is not None else str(result.error)


def _describe(cand: Candidate, manifest: Manifest) -> None:
    """What the build and its gate say about an artifact."""
    gate = manifest.gate
    cand.cache_key, cand.size_bytes, cand.build_seconds = (
        manifest.cache_key,
        manifest.size_bytes,
        manifest.build_seconds,
    )
    if gate.evaluation is not None:
        ev = gate.evaluation
        cand.metric, cand.metric_value, cand.metric_drop = ev.metric, ev.value, ev.drop
    if gate.parity is not None:
        cand.parity_worst = gate.parity.worst
    if gate.passed is False:
        cand.status, cand.reason = "rejected", "; ".join(gate.breaches) or "the gate failed"
    elif gate.passed is None:
        cand.status, cand.reason = "failed", gate.reason or "the gate did not run here"
    else:
        cand.status = "measured"  # until its cell says otherwise


def _bench_settings(s: Session, threads: int, requests: int) -> BenchSettings:
    base = s.config.bench
    fields = {name: getattr(base, name) for name in BenchSettings.model_fields if getattr(base, name) is not None}
    fields |= {"batches": [s.batch], "threads": threads, "mode": s.mode, "requests": requests}
    return BenchSettings(**fields)


def _variant_of(s: Session, cand: Candidate, threads: int, requests: int, stage: Stage) -> Candidate:
    """The candidate of an artifact at a run setting, made from its default-setting record."""
    cid = f"{cand.artifact}@{setting_id(threads, requests, s.mode)}"
    found = next((c for c in s.candidates if c.id == cid), None)
    if found is None:
        found = cand.model_copy(update={"id": cid, "threads": threads, "requests": requests, "stage": stage})
        found.measurements = []
        s.candidates.append(found)
    return found


def measure(s: Session, stage: Stage, artifacts: list[str], threads: int, requests: int) -> bool:
    """One ``kiln bench`` run of these artifacts beside eager at one setting; False when the
    budget had run out."""
    artifacts = [a for a in dict.fromkeys(artifacts) if a != "eager-fp32"]
    if not artifacts and stage != "float":
        return True
    if s.over_budget():
        s.notes.append(f"{stage}: not measured at {setting_id(threads, requests, s.mode)}: the budget ran out")
        return False
    name = f"{len(s.runs) + 1:02d}-{stage}-{setting_id(threads, requests, s.mode)}"
    folder = s.workspace / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "export").symlink_to((s.model_dir / "export").resolve(), target_is_directory=True)
    for artifact in ["eager-fp32", *artifacts]:
        (folder / artifact).symlink_to((s.workspace / "artifacts" / artifact).resolve(), target_is_directory=True)
    s.progress(f"measuring {len(artifacts)} candidate(s) beside eager ({name})")
    run = BenchRun(overrides=_bench_settings(s, threads, requests), report_dir=folder)
    results, _ = bench(folder, run, lambda msg: s.progress(f"{name}: {msg}"))
    for cell in results.cells:
        cand = _variant_of(s, s.artifacts[cell.key], threads, requests, stage)
        if isinstance(cell, MeasuredCell):
            lat = cell.latency
            cand.measurements.append(
                Measurement(
                    run=name,
                    p50_ms=lat.p50_ms,
                    p90_ms=lat.p90_ms,
                    cv=lat.cv,
                    throughput=lat.throughput,
                    unstable=lat.unstable,
                    speedup_vs_eager=cell.speedup_vs_eager,
                )
            )
            cand.status = "measured"
        else:
            cand.status, cand.reason = "failed", f"{cell.status}: {cell.reason}"
    s.runs.append(
        Run(
            name=name,
            stage=stage,
            threads=threads,
            requests=requests,
            cells=len(results.cells),
            machine_load=results.machine_load,
        )
    )
    return True
