"""``kiln bench``: build what is missing or stale, measure every artifact beside eager, write
``results.json`` (the source of truth), ``report.md`` and ``report.html``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln import __version__
from kiln.bench.flops import ProgramWeights
from kiln.bench.harness import CellPlan, Progress, run_cells
from kiln.bench.process import DEFAULT_LAUNCH, Launch
from kiln.config import BenchSettings, KilnConfig, TargetConfig, parse_selector
from kiln.errors import ConfigError, UnavailableError
from kiln.manifest import Manifest
from kiln.results import FailedCell, Gates, MeasuredCell, Results
from kiln.spec import Signature, batch_dim
from kiln.store import MANIFEST
from kiln.targets import BASELINE


@dataclass(frozen=True)
class BenchRun:
    """What to measure and where the files go; *how* cells are measured is :class:`BenchSettings`.

    ``overrides`` holds the command line's flags: only the fields set in it explicitly replace
    the config's ``[bench]`` values (``BenchSettings(threads=4)`` overrides threads alone).
    """

    targets: tuple[str, ...] = ()  # NAME[:PRECISION] selectors; eager always runs
    overrides: BenchSettings = field(default_factory=BenchSettings)
    out: Path = Path("build")
    report_dir: Path | None = None  # default: OUT/<model>/ (or the benchmarked folder)
    refresh_peak: bool = False
    launch: Launch = DEFAULT_LAUNCH


def plans_from_config(config: KilnConfig, out: Path, progress: Progress) -> tuple[list[CellPlan], Path]:
    """Build (or find up to date) every target plus the eager baseline; one plan per target."""
    from kiln.capture.sources import source_kind
    from kiln.pipeline.build import build

    # An ONNX source has no PyTorch program for eager to run (its parity reference is ONNX
    # Runtime on the source file): its cells get no speed-up against eager.
    onnx = source_kind(config.model.source) == "onnx"
    if not onnx and not any(t.name == BASELINE for t in config.target):
        config = config.model_copy(update={"target": [TargetConfig(name=BASELINE), *config.target]})
    results = build(config, out, progress)
    model_dir = out / config.model.name
    plans = []
    for result in results:
        t = result.target
        plan = CellPlan(t.name, t.precision, t.key, model_dir / t.key, result.manifest)
        here = result.available
        blocked = here.reason if result.error is None and here is not None and not here.run else None
        if isinstance(result.error, UnavailableError) or blocked:
            plan.skipped = blocked or str(result.error)
        elif result.error is not None:
            plan.error = f"build failed: {result.error}"
        plans.append(plan)
    return plans, model_dir


def _wanted(manifest: Manifest, selectors: tuple[str, ...]) -> bool:
    return (
        manifest.target == BASELINE
        or not selectors
        or any(parse_selector(s).matches(manifest.target, manifest.precision, manifest.slug) for s in selectors)
    )


def plans_from_folder(model_dir: Path, selectors: tuple[str, ...]) -> list[CellPlan]:
    """Every built artifact in ``build/<model>/`` (those matching ``--target`` if given)."""
    from kiln.targets import available_here, built_with

    plans = []
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file()):
        manifest = Manifest.read(folder)
        if not _wanted(manifest, selectors):
            continue
        plan = CellPlan(manifest.target, manifest.precision, folder.name, folder, manifest)
        here = available_here(built_with(manifest))
        plan.skipped = None if here.run else here.reason
        plans.append(plan)
    if not any(p.target == BASELINE for p in plans):
        raise ConfigError(
            f"{model_dir} has no eager artifact to compare with; run kiln build with an eager target "
            "(or bench the kiln.toml, which builds it)"
        )
    return sorted(plans, key=lambda p: p.target != BASELINE)


def _signature(plans: list[CellPlan]) -> Signature:
    for plan in plans:
        if plan.manifest is not None:
            return plan.manifest.signature
    why = "; ".join(f"{p.key}: {p.error or p.skipped}" for p in plans if p.error or p.skipped)
    raise ConfigError(f"no artifact was built to benchmark ({why or 'none found'}); fix the build and run again")


def _check_batches(sig: Signature, settings: BenchSettings) -> None:
    if sig.generative and (settings.batches != [1] or settings.mode != "latency"):
        raise ConfigError(
            "a causal LM is benchmarked decoding one sequence: use --batch 1 and --mode latency "
            "(the [bench] prompt_tokens and new_tokens set what is measured)"
        )
    dim = batch_dim(sig)
    if dim is None:
        if settings.batches != [1]:
            raise ConfigError("the model has no named batch dim (its first input's first size is fixed); use --batch 1")
        return
    spec = sig.dims[dim]
    bad = [b for b in settings.batches if not spec.min <= b <= spec.max]
    if bad:
        raise ConfigError(
            f"batch {bad[0]} is outside the model's {dim!r} range {spec.min}..{spec.max}; "
            f"choose batches in that range or widen [model].dims.{dim} and rebuild"
        )


@dataclass
class _Programs:
    """What the captured programs say, per plan: FLOPs per batch and weight bytes."""

    flops: dict[int, int]  # of the model's own program (export/)
    per_key: dict[str, dict[int, int]]
    weights: dict[str, ProgramWeights | None]


def _programs(model_dir: Path, plans: list[CellPlan], sig: Signature, settings: BenchSettings) -> _Programs:
    """FLOPs per batch of the captured program (a causal LM's at one decode step at the mean
    context), and per plan: a pruned variant counts its own smaller program (``export-<slug>/``)."""
    import torch

    from kiln.bench.flops import count_flops, program_weights
    from kiln.bench.generation import fitting_prompts, mean_past

    sizes = None
    if sig.generative:
        assert settings.new_tokens is not None
        built = next((p.manifest for p in plans if p.manifest is not None), None)
        prompts = fitting_prompts(built, settings)[0]
        sizes = {"sequence": 1, "past": mean_past(prompts, settings.new_tokens)} if prompts else None
    by_dir: dict[str, tuple[dict[int, int], ProgramWeights | None]] = {}

    def read(folder: str) -> tuple[dict[int, int], ProgramWeights | None]:
        if folder not in by_dir:
            path = model_dir / folder / "program.pt2"
            if not path.is_file():
                by_dir[folder] = ({}, None)
            else:
                program = torch.export.load(str(path))
                counted = count_flops(program, sig, settings.batches, sizes) if sizes or not sig.generative else {}
                by_dir[folder] = (counted, program_weights(program))
        return by_dir[folder]

    folders = {p.key: p.manifest.export_dir if p.manifest else "export" for p in plans}
    return _Programs(
        flops=read("export")[0],
        per_key={key: read(folder)[0] for key, folder in folders.items()},
        weights={key: read(folder)[1] for key, folder in folders.items()},
    )


def add_profiles(
    cells: list[MeasuredCell | FailedCell], plans: list[CellPlan], settings: BenchSettings, progress: Progress
) -> None:
    """``--profile``: each measured artifact's op profile at the first batch, after every timed
    round (profiling perturbs timing); a quantized artifact with a large fp32 share is flagged."""
    from kiln.bench.profile import profile_artifact

    assert settings.threads is not None
    batch = settings.batches[0]
    for plan in plans:
        cell = next((c for c in cells if c.key == plan.key and c.batch == batch), None)
        if not isinstance(cell, MeasuredCell) or plan.folder is None or plan.manifest is None:
            continue
        progress(f"profiling {plan.key} at batch {batch}")
        cell.profile = profile_artifact(plan.folder, plan.manifest, batch, settings.threads)
        if cell.profile.flag:
            cell.flags.append(cell.profile.flag)


def bench(source: Path, run: BenchRun, progress: Progress = lambda _: None) -> tuple[Results, Path]:
    """Run the benchmark of a ``kiln.toml`` or a ``build/<model>`` folder; returns the results
    and the folder the reports were written to."""
    from kiln.bench.analysis import enrich
    from kiln.bench.bandwidth import machine_bandwidth
    from kiln.bench.generation import add_rooflines
    from kiln.bench.load import machine_load, snapshot
    from kiln.bench.peak import machine_peak
    from kiln.config import load_config, with_targets
    from kiln.report import write_reports
    from kiln.targets import fingerprint

    config: KilnConfig | None = None
    if source.is_dir():
        model_dir, plans, base = source, plans_from_folder(source, run.targets), BenchSettings()
    else:
        config = with_targets(load_config(source), list(run.targets))
        plans, model_dir = plans_from_config(config, run.out, progress)
        base = config.bench
    fp = fingerprint()
    sig = _signature(plans)
    settings = base.merged(run.overrides).resolve(fp.physical_cores, generative=sig.generative)
    _check_batches(sig, settings)
    progress("measuring the machine's peak (cached per fingerprint)")
    assert settings.threads is not None  # resolved
    peak = machine_peak(fp, settings.threads, refresh=run.refresh_peak)
    bandwidth = None
    if sig.generative:
        progress("measuring the memory bandwidth (cached per fingerprint)")
        bandwidth = machine_bandwidth(fp, settings.threads, refresh=run.refresh_peak)
    progress("counting FLOPs from the captured program")
    programs = _programs(model_dir, plans, sig, settings)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    before = snapshot()
    cells = run_cells(plans, settings, progress, run.launch)
    load = machine_load(before, snapshot())
    if settings.profile:
        add_profiles(cells, plans, settings, progress)
    manifests = {p.key: p.manifest for p in plans}
    cells = enrich(cells, manifests, programs.per_key, peak, settings.cv_threshold, settings.ci_target)
    add_rooflines(cells, manifests, programs.weights, bandwidth)
    built = next((m for m in manifests.values() if m is not None), None)
    results = Results(
        kiln_version=__version__,
        created=started,
        model=model_dir.name,
        source=config.model.source if config else (built.source if built else None),
        config=str(source),
        settings=settings,
        fingerprint=fp,
        machine_load=load,
        peak=peak,
        bandwidth=bandwidth,
        flops=programs.flops,
        gates=Gates(max_metric_drop=config.gates.max_metric_drop if config else None),
        cells=cells,
    )
    out_dir = run.report_dir or model_dir
    write_reports(results, out_dir, html=True)
    return results, out_dir
