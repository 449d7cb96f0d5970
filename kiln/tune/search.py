"""The search: build and gate each candidate with ``kiln build``'s own code, time it beside
eager with ``kiln bench``'s own harness, keep what the accuracy budget allows, cheapest first.

Stages, each bounded by the budget (checked before every build and every run; work already
started finishes, the rest is recorded as not tried):

1. ``float``: eager and every target's fp32, at the default threads. Cheap to build, and it says
   which runtimes suit this model on this machine.
2. ``precisions``: every other precision of the targets whose fp32 came within ``keep_within``
   of the best fp32; the others are pruned as dominated, with their figure.
3. ``options``: the quantizer settings (one at a time) of each quantized target x precision that
   came within ``keep_within`` of the best so far, or that the gate rejected (a calibration
   method or preset may bring its accuracy back).
4. ``threads``: the front's fastest few at every other thread count (and, in throughput mode,
   requests in flight).
5. ``final``: the front measured again together, in one run per setting, so the winner is
   picked from figures taken side by side.

Artifacts live in ``<out>/<model>/tune/artifacts/<id>/`` (hard links to what the build wrote, so
the next variant of the same target x precision can build in its place); a rerun reuses every
artifact whose cache key still matches. Each run is a folder of links under ``tune/runs/`` that
``kiln bench`` measures like any build folder, with its own results.json and report.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from kiln import __version__
from kiln.capture.sources import source_kind
from kiln.config import GatesConfig, KilnConfig, load_config
from kiln.errors import ConfigError
from kiln.pipeline.build import per_adapter
from kiln.store import write_json
from kiln.targets import BASELINE, REGISTRY
from kiln.tune import pareto
from kiln.tune.records import Candidate, Status, TuneResults
from kiln.tune.session import Progress, Session, TuneSettings, build_one, measure, setting_id
from kiln.tune.space import Variant, enumerate_space, option_variants, request_counts, thread_counts

TUNE_JSON, TUNE_HTML = "tune.json", "tune.html"


def _measured(s: Session, ids: list[str]) -> list[str]:
    return [a for a in ids if s.artifacts[a].status == "measured"]


def _quantized(target: str, precision: str) -> bool:
    return REGISTRY[target].precision(precision).quantized


def _best(s: Session, cands: list[Candidate]) -> float:
    return min((pareto.cost(c, s.settings.objective) for c in cands if c.status == "measured"), default=float("inf"))


def _stage_float(s: Session, variants: list[Variant]) -> None:
    built = [build_one(s, v).artifact for v in variants if v.stage == "float"]
    eager = s.artifacts["eager-fp32"]
    if eager.status != "measured":
        raise ConfigError(f"eager, the baseline, did not build ({eager.reason}); fix that with kiln build first")
    measure(s, "float", _measured(s, built), s.threads, s.requests)
    if eager.status != "measured":
        raise ConfigError(f"eager, the baseline, did not run ({eager.reason}); fix that with kiln bench first")


def _stage_precisions(s: Session, variants: list[Variant]) -> None:
    obj, factor = s.settings.objective, s.settings.keep_within
    fp32 = {c.target: c for c in s.artifacts.values() if c.precision == "fp32" and c.target != BASELINE}
    best = _best(s, list(fp32.values()))
    order = sorted(fp32.values(), key=lambda c: pareto.cost(c, obj))
    kept = [c.target for c in order if c.status == "measured" and pareto.within(pareto.cost(c, obj), best, factor, obj)]
    built = []
    for v in sorted((v for v in variants if v.stage == "precisions"), key=lambda v: _rank(kept, v.target.name)):
        if v.target.name in kept:
            built.append(build_one(s, v).artifact)
            continue
        base = fp32.get(v.target.name)
        _pruned(s, v, _why_pruned(s, base, best))
    measure(s, "precisions", _measured(s, built), s.threads, s.requests)


def _rank(kept: list[str], name: str) -> int:
    return kept.index(name) if name in kept else len(kept)


def _why_pruned(s: Session, base: Candidate | None, best: float) -> str:
    if base is None or base.status != "measured":
        return f"its fp32 was not measured ({base.status if base else 'absent'}: {base.reason if base else ''})"
    unit = "ms p50" if s.settings.objective == "latency" else "items/s"
    value, top = abs(pareto.cost(base, s.settings.objective)), abs(best)
    return (
        f"dominated: its fp32 ({value:.4g} {unit}) is not within {s.settings.keep_within}x of the best fp32 "
        f"({top:.4g} {unit})"
    )


def _pruned(s: Session, v: Variant, reason: str, status: Status = "pruned") -> None:
    s.candidates.append(
        Candidate(
            id=f"{v.id}@{setting_id(s.threads, s.requests, s.mode)}",
            artifact=v.id,
            target=v.target.name,
            precision=v.target.precision,
            options=dict(v.target.options),
            threads=s.threads,
            requests=s.requests,
            stage=v.stage,  # type: ignore[arg-type]
            status=status,
            reason=reason,
        )
    )


def _slower(s: Session, base: Candidate, best: float) -> str:
    unit = "ms p50" if s.settings.objective == "latency" else "items/s"
    value, top = abs(pareto.cost(base, s.settings.objective)), abs(best)
    return f"dominated: with default options ({value:.4g} {unit}) not within {s.settings.keep_within}x of the best ({top:.4g} {unit})"


def _stage_options(s: Session) -> None:
    """Quantizer settings of the quantized artifacts worth it: fast enough, or rejected (another
    calibration method or preset may pass the gate)."""
    obj, factor = s.settings.objective, s.settings.keep_within
    quantized = [c for c in list(s.artifacts.values()) if _quantized(c.target, c.precision) and c.stage == "precisions"]
    best = _best(s, list(s.artifacts.values()))
    built = []
    for base in sorted(quantized, key=lambda c: pareto.cost(c, obj)):
        fast = base.status == "measured" and pareto.within(pareto.cost(base, obj), best, factor, obj)
        for v in option_variants(s.variants[base.artifact].target):
            if fast or base.status == "rejected":
                built.append(build_one(s, v).artifact)
            elif base.status == "measured":
                _pruned(s, v, _slower(s, base, best))
            elif base.status == "not tried":
                _pruned(s, v, base.reason or "the budget ran out", status="not tried")
            else:
                _pruned(s, v, f"its default options were {base.status}: {base.reason}")
    measure(s, "options", _measured(s, built), s.threads, s.requests)


def _stage_threads(s: Session, counts: list[int]) -> None:
    """The front's fastest at every other setting: one run per setting, all of them in it."""
    obj = s.settings.objective
    default = [c for c in s.candidates if c.threads == s.threads and c.requests == s.requests]
    fastest = [c.artifact for c in pareto.front(default, obj)[: s.settings.front_for_threads]]
    if not fastest:
        return
    settings = [(t, r) for t in counts for r in request_counts(t, s.mode) if (t, r) != (s.threads, s.requests)]
    s.notes.append(f"threads: {', '.join(fastest)} (the front's fastest) to try at {len(settings)} other setting(s)")
    for threads, requests in settings:
        if not measure(s, "threads", fastest, threads, requests):
            return


def _stage_final(s: Session) -> None:
    """The front measured again side by side, one run per setting, unless one run already holds it."""
    on_front = pareto.front(s.candidates, s.settings.objective)
    if len(on_front) < 2 or len({c.latest.run for c in on_front if c.latest}) == 1:
        return
    groups: dict[tuple[int, int], list[str]] = {}
    for c in on_front:
        groups.setdefault((c.threads, c.requests), []).append(c.artifact)
    for (threads, requests), artifacts in groups.items():
        if not measure(s, "final", artifacts, threads, requests):
            s.notes.append("final: the winner is picked from the stages' figures (no side-by-side run)")
            return


def _unmeasured(cands: list[Candidate]) -> None:
    """A candidate built and gated but never timed (the budget ran out first) is *not tried*,
    not *measured*, so that no table counts it measured or ranks it without a figure."""
    for cand in cands:
        if cand.status == "measured" and not cand.measurements:
            cand.status, cand.reason = "not tried", "built and gated, but the budget ran out before it was measured"


def _check_batch(config: KilnConfig, batch: int) -> None:
    """The batch fits the model's batch dim, before anything is built."""
    first = config.model.inputs[0].shape[0] if config.model.inputs and config.model.inputs[0].shape else None
    if isinstance(first, str):
        dim = config.model.dims[first]
        if not dim.min <= batch <= dim.max:
            raise ConfigError(
                f"--batch {batch} is outside the model's {first!r} range {dim.min}..{dim.max}; "
                f"choose one in that range or widen [model].dims.{first}"
            )
    elif isinstance(first, int) and batch != 1:
        raise ConfigError("the model's first input has a fixed first size (no named batch dim); use --batch 1")


def _prepare(config_path: Path, settings: TuneSettings) -> KilnConfig:
    config = load_config(config_path)
    if len(per_adapter(config)) > 1:
        raise ConfigError(f"{config_path}: [model].adapter lists several adapters; tune one model at a time")
    if settings.max_metric_drop is not None:
        config = config.model_copy(update={"gates": GatesConfig(max_metric_drop=settings.max_metric_drop)})
    if settings.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes {settings.budget_minutes}: give a positive number of minutes")
    return config


def tune(config_path: Path, settings: TuneSettings, progress: Progress = lambda _: None) -> tuple[TuneResults, Path]:
    """Search, write tune.json and tune.html into ``<out>/<model>/tune/``; returns the results
    and that folder. Every candidate and why it won, lost or was left out is in the results."""
    from kiln.report.tune import render_tune_html
    from kiln.targets import fingerprint
    from kiln.tune.output import page

    config = _prepare(config_path, settings)
    fp = fingerprint()
    batch = settings.batch or config.bench.batches[0]
    _check_batch(config, batch)
    counts = sorted(set(settings.threads)) or thread_counts(fp.physical_cores)
    threads = config.bench.threads or fp.physical_cores
    if settings.threads and threads not in counts:
        threads = max(counts)
    s = Session(config, settings, fp, batch, threads, progress)
    variants, skipped = enumerate_space(config, source_kind(config.model.source), settings.targets)
    shutil.rmtree(s.workspace / "runs", ignore_errors=True)
    s.workspace.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        _stage_float(s, variants)
        _stage_precisions(s, variants)
        _stage_options(s)
        _stage_threads(s, counts)
        _stage_final(s)
    except KeyboardInterrupt:
        s.notes.append("interrupted: what was measured so far is kept")
        raise
    finally:
        _unmeasured(s.candidates)
        best = pareto.mark(s.candidates, settings.objective)
        results = TuneResults(
            kiln_version=__version__,
            created=created,
            model=config.model.name,
            config=str(config_path),
            objective=settings.objective,
            mode=s.mode,  # type: ignore[arg-type]
            batch=batch,
            max_metric_drop=config.gates.max_metric_drop,
            budget_minutes=settings.budget_minutes,
            elapsed_s=round(s.elapsed(), 1),
            budget_exhausted=s.exhausted,
            fingerprint=fp,
            skipped=skipped,
            candidates=s.candidates,
            runs=s.runs,
            winner=best.id if best else None,
            notes=s.notes,
        )
        with contextlib.suppress(OSError):
            write_json(s.workspace / TUNE_JSON, results.to_json())
            (s.workspace / TUNE_HTML).write_text(render_tune_html(page(results)))
    return results, s.workspace
