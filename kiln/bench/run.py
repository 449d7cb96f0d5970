"""``kiln bench``: build what is missing or stale, measure every artifact beside eager, write
``results.json`` (the source of truth), ``report.md`` and ``report.html``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.bench.harness import BenchOptions, CellPlan, Progress, run_cells
from kiln.config import BenchConfig, KilnConfig, TargetConfig
from kiln.errors import ConfigError, UnavailableError
from kiln.spec import Signature, batch_dim
from kiln.store import MANIFEST, read_json

RESULTS_SCHEMA = "kiln.results/1"


@dataclass
class BenchRequest:
    """What the command line asked for; ``None`` means the config's ``[bench]`` value."""

    targets: list[str] = field(default_factory=list)
    batches: list[int] | None = None
    threads: int | None = None
    mode: str | None = None
    min_seconds: float | None = None
    min_iters: int | None = None
    warmup_seconds: float | None = None
    rounds: int | None = None
    out: Path = Path("build")
    report_dir: Path | None = None
    refresh_peak: bool = False


def options_from(bench: BenchConfig, req: BenchRequest) -> BenchOptions:
    """Merge ``[bench]`` with the command line; threads default to the physical cores."""
    from kiln.hardware import fingerprint

    threads = req.threads or bench.threads or fingerprint()["physical_cores"]
    return BenchOptions(
        batches=tuple(req.batches or bench.batch),
        threads=threads,
        mode=req.mode or bench.mode,
        requests=bench.requests or max(2, threads),
        min_seconds=req.min_seconds if req.min_seconds is not None else bench.min_seconds,
        min_iters=req.min_iters if req.min_iters is not None else bench.min_iters,
        warmup_seconds=req.warmup_seconds if req.warmup_seconds is not None else bench.warmup_seconds,
        warmup_iters=bench.warmup_iters,
        rounds=req.rounds or bench.rounds,
        cv_threshold=bench.cv_threshold,
    )


def plans_from_config(config: KilnConfig, out: Path, progress: Progress) -> tuple[list[CellPlan], Path]:
    """Build (or find up to date) every target plus the eager baseline; one plan per target."""
    from kiln.build import build
    from kiln.targets import availability

    if not any(t.name == "eager" for t in config.target):
        config = config.model_copy(update={"target": [TargetConfig(name="eager"), *config.target]})
    results = build(config, out, progress)
    model_dir = out / config.model.name
    plans = []
    for result in results:
        t = result.target
        plan = CellPlan(t.name, t.precision, t.key, model_dir / t.key, result.manifest or {})
        avail = availability(t.name)
        if isinstance(result.error, UnavailableError) or (result.error is None and not avail.run):
            plan.skipped = avail.reason or str(result.error)
        elif result.error is not None:
            plan.error = f"build failed: {result.error}"
        plans.append(plan)
    return plans, model_dir


def plans_from_folder(model_dir: Path, selectors: list[str]) -> list[CellPlan]:
    """Every built artifact in ``build/<model>/`` (those matching ``--target`` if given)."""
    from kiln.targets import availability

    plans = []
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file()):
        manifest = read_json(folder / MANIFEST) or {}
        name, precision = manifest.get("target", ""), manifest.get("precision", "")
        wanted = not selectors or any(
            name == s.partition(":")[0] and s.partition(":")[2] in ("", precision) for s in selectors
        )
        if not wanted and name != "eager":
            continue
        plan = CellPlan(name, precision, folder.name, folder, manifest)
        if not availability(name).run:
            plan.skipped = availability(name).reason
        plans.append(plan)
    if not any(p.target == "eager" for p in plans):
        raise ConfigError(
            f"{model_dir} has no eager artifact to compare with; run kiln build with an eager target "
            "(or bench the kiln.toml, which builds it)"
        )
    return sorted(plans, key=lambda p: p.target != "eager")


def _signature(plans: list[CellPlan]) -> Signature:
    for plan in plans:
        if plan.manifest.get("signature"):
            return Signature.from_dict(plan.manifest["signature"])
    why = "; ".join(f"{p.key}: {p.error or p.skipped}" for p in plans if p.error or p.skipped)
    raise ConfigError(f"no artifact was built to benchmark ({why or 'none found'}); fix the build and run again")


def _check_batches(sig: Signature, options: BenchOptions) -> BenchOptions:
    dim = batch_dim(sig)
    if dim is None:
        if options.batches != (1,):
            raise ConfigError("the model has no named batch dim (its first input's first size is fixed); use --batch 1")
        return options
    spec = sig.dims[dim]
    bad = [b for b in options.batches if not spec.min <= b <= spec.max]
    if bad:
        raise ConfigError(
            f"batch {bad[0]} is outside the model's {dim!r} range {spec.min}..{spec.max}; "
            f"choose batches in that range or widen [model].dims.{dim} and rebuild"
        )
    return options


def _load() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine is what makes cells unstable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def bench(source: Path, req: BenchRequest, progress: Progress = lambda _: None) -> tuple[dict[str, Any], Path]:
    """Run the benchmark of a ``kiln.toml`` or a ``build/<model>`` folder; returns the results
    and the folder the reports were written to."""
    from kiln.bench.analysis import enrich
    from kiln.bench.flops import count_flops
    from kiln.bench.peak import machine_peak
    from kiln.config import load_config, with_targets
    from kiln.hardware import fingerprint

    config: KilnConfig | None = None
    if source.is_dir():
        model_dir, plans = source, plans_from_folder(source, req.targets)
        bench_cfg = BenchConfig()
    else:
        config = with_targets(load_config(source), req.targets)
        plans, model_dir = plans_from_config(config, req.out, progress)
        bench_cfg = config.bench
    sig = _signature(plans)
    options = _check_batches(sig, options_from(bench_cfg, req))
    fp = fingerprint()
    progress("measuring the machine's peak (cached per fingerprint)")
    peak = machine_peak(fp, options.threads, refresh=req.refresh_peak)
    program = model_dir / "export" / "program.pt2"
    progress("counting FLOPs from the captured program")
    flops = count_flops(program, sig, list(options.batches)) if program.is_file() else {}
    # Pruned variants have their own, smaller program: count their FLOPs on it.
    variant_flops: dict[str, dict[int, int]] = {}
    by_dir: dict[str, dict[int, int]] = {"export": flops}
    for plan in plans:
        folder = (plan.manifest or {}).get("export_dir", "export")
        if folder not in by_dir:
            variant = model_dir / folder / "program.pt2"
            by_dir[folder] = count_flops(variant, sig, list(options.batches)) if variant.is_file() else {}
        variant_flops[plan.key] = by_dir[folder]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = _load()
    cells = run_cells(plans, options, progress)
    load = {"load_average_before": load_before, "load_average_after": _load(), "cpus": os.cpu_count()}
    manifests = {p.key: p.manifest for p in plans}
    cells = enrich(cells, manifests, variant_flops, peak, options.cv_threshold)
    results = {
        "schema": RESULTS_SCHEMA,
        "kiln_version": __version__,
        "created": started,
        "model": model_dir.name,
        "source": (config.model.source if config else next(iter(manifests.values())).get("source")),
        "config": str(source),
        "settings": options.to_dict(),
        "fingerprint": fp,
        "machine_load": load,
        "peak": peak,
        "flops": {str(b): n for b, n in flops.items()},
        "gates": {"max_metric_drop": config.gates.max_metric_drop if config else None},
        "cells": cells,
    }
    out_dir = req.report_dir or model_dir
    from kiln.report import write_reports

    write_reports(results, out_dir, html=True)
    return results, out_dir
