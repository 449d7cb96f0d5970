"""``kiln build``: export once, build each target, gate it against eager, write its manifest.

The order of work: plan (the registry checks every target x precision, its fit to the source, its
data and its options; cache keys come from file contents, with no torch import, so an unchanged
rebuild finishes in about a second; a target whose packages or hardware are missing is refused
here, before any export) -> load the source and export if stale -> load calibration and
evaluation data once -> for each stale target: compile into a temporary folder, load (or
simulate), gate, write the manifest, rename into place.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.capture.exporters import META, TOKENIZER, ExportBundle
from kiln.capture.loaded import LoadedModel
from kiln.capture.sources import gguf_file, load_source, source_kind
from kiln.config import KilnConfig, TargetConfig
from kiln.errors import ConfigError, KilnError, ParityError
from kiln.gate.golden import GOLDEN
from kiln.manifest import (
    AdapterRecord,
    CalibrationSummary,
    DistillReport,
    FileEntry,
    Gate,
    GgufRecord,
    GoldenRecord,
    Manifest,
    SearchRecord,
    StageRecord,
)
from kiln.pipeline.memory import check_fits, weights_of_module, weights_of_source
from kiln.pipeline.planning import (
    BuildPlan,
    TargetPlan,
    distilled_key,
    one_target,
    per_adapter,
    plan,
    tokenizer_dir,
    with_members,
)
from kiln.pipeline.progress import Progress, Stages
from kiln.pipeline.search import describe, fallbacks, search_note, search_step, with_options
from kiln.pipeline.variants import distilled, member_variant, module_metric, pruned_variant
from kiln.store import (
    BuildLock,
    atomic_dir,
    clean_debris,
    file_entries,
    up_to_date,
)
from kiln.targets import (
    Availability,
    qat_applies,
    tolerance_for,
)
from kiln.versions import CORE, versions

# What callers import from here: the build, and the plan it starts from.
__all__ = [
    "BuildPlan",
    "TargetPlan",
    "TargetResult",
    "build",
    "distilled_key",
    "export_only",
    "one_target",
    "per_adapter",
    "plan",
    "with_members",
]

if TYPE_CHECKING:
    from kiln.gate.reference import BuildData, Reference
    from kiln.quant.qat import QatSetup
    from kiln.targets.base import Artifact, CompileContext, Runner, Target


@dataclass
class TargetResult:
    target: TargetConfig
    status: str  # built | up to date | failed
    manifest: Manifest | None = None
    error: KilnError | None = None
    seconds: float = 0.0
    available: Availability | None = None  # the plan's answer to "can it run here"

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.manifest is not None and self.manifest.gate.passed is False:
            return ParityError.exit_code
        return 0


def build(
    config: KilnConfig, out_root: Path, progress: Progress = lambda _: None, check_memory: bool = True
) -> list[TargetResult]:
    """Build every configured target (of every adapter's model); failures are collected per
    target, not raised. ``progress`` is told each stage as it starts and ends
    (:mod:`kiln.pipeline.progress`). Unless ``check_memory`` is false, a build whose estimated
    peak memory is more than the machine has is refused before any work
    (:mod:`kiln.pipeline.memory`)."""
    return [r for each in per_adapter(config) for r in _build_model(each, out_root, progress, check_memory)]


def _build_model(config: KilnConfig, out_root: Path, progress: Progress, check_memory: bool) -> list[TargetResult]:
    p = plan(config, out_root)
    with BuildLock(p.model_dir):
        clean_debris(p.model_dir)
        results: dict[str, TargetResult] = {}
        for key, tp in p.targets.items():
            manifest = _up_to_date(p.model_dir / key, tp.key)
            if manifest is not None:
                results[key] = TargetResult(tp.target, "up to date", manifest)
            elif not tp.available.build and not _implementation(tp).prepares:
                # Nothing to do here without the toolchain: refused with no export.
                results[key] = TargetResult(tp.target, "failed", error=tp.available.error(tp.label))
        stale = [tp for key, tp in p.targets.items() if key not in results]
        if stale:
            _build_stale(p, stale, results, Stages(config.model.name, progress), check_memory)
        return [replace(results[t.key], available=p.targets[t.key].available) for t in p.config.target]


def _up_to_date(folder: Path, key: str) -> Manifest | None:
    manifest = Manifest.find(folder)  # one read of manifest.json per target
    return manifest if manifest is not None and manifest.cache_key == key else None


def _implementation(tp: TargetPlan) -> Target:
    from kiln.targets import implementation

    return implementation(tp.target.name)


def _build_stale(
    p: BuildPlan, stale: list[TargetPlan], results: dict[str, TargetResult], stages: Stages, check_memory: bool
) -> None:
    from kiln.gate.reference import BuildData, Reference

    config, progress = p.config, stages.progress
    loaded = _load_checked(config, stages, check_memory)
    # Data is checked against the input spec before the capture: a mismatch leaves nothing behind.
    with stages.stage("data"):
        data = BuildData.load(config, loaded.signature)
    distillation = None
    if config.recovery is not None and config.recovery.teacher is not None:
        with stages.stage("distill"):
            loaded, distillation = distilled(p, loaded, data, progress)
    with stages.stage("export"):
        bundle = _export(p, loaded, progress, distillation)
    dense = Reference(config, bundle, loaded.module if loaded.kind != "onnx" else None, data)
    variants: dict[str | None, tuple[ExportBundle, Reference]] = {None: (bundle, dense)}
    for tp in stale:
        if bundle.signature.generative:  # known once exported (a task of "auto" included)
            tp = replace(tp, tolerance=tolerance_for(tp.target, generative=True))
        start = time.perf_counter()
        own = stages.child(tp.target.key)
        try:
            variant = tp.target.variant
            if variant not in variants:
                make = member_variant if tp.target.member else pruned_variant
                with own.stage("variant"):
                    variants[variant] = make(p, tp.target, loaded, dense, progress)
            variant_bundle, reference = variants[variant]
            manifest = _build_target(p, tp, variant_bundle, reference, own, stages.records)
            results[tp.target.key] = TargetResult(tp.target, "built", manifest, seconds=time.perf_counter() - start)
        except KilnError as err:
            results[tp.target.key] = TargetResult(tp.target, "failed", error=err, seconds=time.perf_counter() - start)


def _load_checked(config: KilnConfig, stages: Stages, check_memory: bool) -> LoadedModel:
    """The model source, loaded; unless ``check_memory`` is false, a model too large for this
    machine is refused first where its weights can be counted from its files (``hf:``, GGUF), or
    else right after loading, before export."""
    counted = weights_of_source(config.model, config.root) if check_memory else None
    if counted is not None:
        check_fits(config.model.name, counted)
    with stages.stage("load"):
        loaded = load_source(config.model, config.root)
    if check_memory and counted is None and hasattr(loaded.module, "parameters"):
        check_fits(config.model.name, weights_of_module(loaded.module))
    return loaded


def _export(
    p: BuildPlan, loaded: LoadedModel, progress: Progress, distillation: DistillReport | None = None
) -> ExportBundle:
    from kiln.capture.exporters import StageModel, export_stage

    def model() -> StageModel:
        tokenizer = tokenizer_dir(p.config)
        progress(f"{p.config.model.name}: export: capturing with torch.export and lowering to ONNX")
        if tokenizer is not None and loaded.tokenizer is None:
            return StageModel(replace(loaded, tokenizer=tokenizer), distillation=distillation)
        return StageModel(loaded, distillation=distillation)

    return export_stage(p.model_dir / "export", p.export_key, p.config.export, model)


def _context(
    p: BuildPlan, tp: TargetPlan, bundle: ExportBundle, reference: Reference, out_dir: Path, progress: Progress
) -> CompileContext:
    from kiln.targets.base import CompileContext

    config, data = p.config, reference.data
    return CompileContext(
        export=bundle,
        target=tp.target,
        options=tp.options,
        out_dir=out_dir,
        tolerance=tp.tolerance,
        calibration=data.calibration,
        calibration_guidance=tp.precision.calibration,
        threads=config.bench.threads,
        evaluation=data.evaluation,
        max_metric_drop=config.gates.max_metric_drop,
        root=config.root,
        qat=_qat_setup(p, tp, reference, progress) if qat_applies(config, tp.target) else None,
    )


def _qat_setup(p: BuildPlan, tp: TargetPlan, reference: Reference, progress: Progress) -> QatSetup:
    """Quantization-aware training's inputs: the float eager model the gate compares with, the
    recovery settings, the teacher, and the task metric for PTQ and QAT side by side."""
    from kiln.quant.qat import QatSetup

    config, sig = p.config, reference.bundle.signature
    assert config.recovery is not None
    if reference.module is None:
        raise ConfigError(f"{tp.label}: quantization-aware training needs a PyTorch model; set [recovery] qat = false")
    teacher = None
    if config.recovery.teacher is not None:
        from kiln.train.distill import load_teacher

        teacher = load_teacher(config, sig)
    evaluate = module_metric(config, reference.data, sig) if reference.data.evaluation is not None else None
    return QatSetup(
        reference.module, config.recovery, config.root, teacher, evaluate, lambda m: progress(f"{tp.label}: {m}")
    )


def _build_target(
    p: BuildPlan, tp: TargetPlan, bundle: ExportBundle, reference: Reference, stages: Stages, shared: list[StageRecord]
) -> Manifest:
    """Compile, gate (and search) into a temporary folder, write the manifest, rename into place;
    the manifest's stages are the model's ``shared`` ones (loading, export) and this target's own."""
    impl = _implementation(tp)
    if not tp.available.build:
        # What needs no toolchain is still done and kept, for inspection, before exit 5.
        with atomic_dir(p.model_dir / f"{tp.target.key}.prepared") as tmp:
            impl.prepare(_context(p, tp, bundle, reference, tmp, stages.progress))
        tp.available.require(tp.label)
    with atomic_dir(p.model_dir / tp.target.key) as tmp:
        site = _Site(impl, bundle, reference, tmp)
        built = _attempt(p, tp, site, stages)
        search = None
        if built.gate.passed is False and (settings := fallbacks(tp, bundle, reference.data.calibration is not None)):
            built, search = _search(p, tp, site, built, settings, stages)
        with stages.stage("write"):  # hashing every file; the rename into place follows the manifest
            files = [FileEntry(**entry) for entry in file_entries(built.folder)]
        manifest = _manifest(p, tp, built, reference.data, _Record(files, [*shared, *stages.records], search))
        manifest.write(tmp)
    return manifest


@dataclass(frozen=True)
class _Site:
    """Where a target's attempts are built: its implementation, the export, the reference and
    the temporary folder that becomes the artifact."""

    impl: Target
    bundle: ExportBundle
    reference: Reference
    tmp: Path


def _attempt(p: BuildPlan, tp: TargetPlan, site: _Site, stages: Stages, attempt: str = "") -> _Built:
    """Compile into the site's folder, load (or simulate) and gate: one artifact with its verdict.
    Its stages are ``compile`` (quantization included) and ``gate``, each named after the search's
    ``attempt`` when it is one."""
    from kiln.targets.base import RunOptions

    impl, bundle, reference, tmp = site.impl, site.bundle, site.reference, site.tmp

    ctx = _context(p, tp, bundle, reference, tmp, stages.progress)
    start = time.perf_counter()
    with stages.stage(f"{attempt}compile"):
        impl.prepare(ctx)
        artifact = impl.compile(ctx)
    seconds = time.perf_counter() - start
    if bundle.tokenizer_dir is not None:  # a causal LM's artifact carries its tokenizer
        shutil.copytree(bundle.tokenizer_dir, tmp / TOKENIZER, dirs_exist_ok=True)
    with stages.stage(f"{attempt}gate"):
        options = RunOptions(threads=ctx.threads)
        runner = impl.load(artifact, options) if tp.available.run else impl.simulated_runner(artifact, ctx)
        if artifact.reference is not None:  # QAT retrained the model: parity is against what it made
            from kiln.gate.reference import Reference

            reference = Reference(p.config, bundle, artifact.reference, reference.data, baseline=reference)
        gate, golden = _gate(tp, artifact, runner, reference)
    return _Built(bundle, artifact, gate, seconds, tmp, golden)


def _search(
    p: BuildPlan,
    tp: TargetPlan,
    site: _Site,
    first: _Built,
    settings: list[dict[str, Any]],
    stages: Stages,
) -> tuple[_Built, SearchRecord]:
    """The accuracy-controlled search: the target's fallback settings, in the order it gives them
    (smallest and fastest first), each built and gated like the first, until one passes. The one
    that passes is kept; when none does, the last (the most conservative) is, and the build fails
    on its gate as it would have on the first."""
    tmp = site.tmp
    tried, built = [search_step({}, first.gate, tmp, first.seconds)], first
    reason = f"{tp.label}: the first setting breached the gate ({tried[0].worst})"
    for update in settings:
        stages.progress(f"{tp.label}: gate breached; trying {describe(update)}")
        for child in tmp.iterdir():  # the folder is the attempt's own: start it empty
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        built = _attempt(p, with_options(tp, update), site, stages, f"attempt {len(tried) + 1}: ")
        tried.append(search_step(update, built.gate, tmp, built.seconds))
        if built.gate.passed is not False:
            break
    chosen = len(tried) - 1 if built.gate.passed is not False else None
    record = SearchRecord(reason=reason, tried=tried, chosen=chosen)
    built.artifact.info.notes.append(search_note(record))
    return built, record


def _gate(tp: TargetPlan, artifact: Artifact, runner: Runner | None, reference: Reference) -> tuple[Gate, GoldenRecord]:
    """The artifact's verdict: run (or simulated) against eager, or built and not run here; and
    its golden set, written into the artifact folder (screened on the runner while it is open)."""
    if runner is None:
        gate = Gate.not_run(tp.available.reason)
        return gate, _golden(tp, artifact, None, reference, gate)
    with runner:
        gate = reference.check(runner, tp.tolerance, real_data=tp.precision.calibrates)
        # What the runtime reports about how it runs, where the build recorded nothing else.
        artifact.info.update({k: v for k, v in runner.info().items() if not artifact.info.has(k)})
        golden = _golden(tp, artifact, runner, reference, gate)
    return gate.model_copy(update={"simulated": not tp.available.run}), golden


def _golden(
    tp: TargetPlan, artifact: Artifact, runner: Runner | None, reference: Reference, gate: Gate
) -> GoldenRecord:
    from kiln.gate import golden

    sig = reference.bundle.signature
    setup = golden.GateSetup(tp.tolerance, reference.primary, tuple(reference.config.model.class_outputs))
    if sig.generative:
        return golden.write_prompts(artifact.path, reference.golden_prompts(), gate.generation, setup)
    cases = [golden.Candidate(*c) for c in reference.golden_cases(real_data=tp.precision.calibrates)]
    return golden.write_cases(artifact.path, sig, cases, setup, runner, reference.runner().infer)


@dataclass(frozen=True)
class _Built:
    """One compiled and gated artifact, before its manifest is written."""

    bundle: ExportBundle
    artifact: Artifact
    gate: Gate
    seconds: float
    folder: Path
    golden: GoldenRecord


@dataclass(frozen=True)
class _Record:
    """What the manifest records beside the artifact: its files, the stages that made it, the search."""

    files: list[FileEntry]
    stages: list[StageRecord]
    search: SearchRecord | None


def _manifest(p: BuildPlan, tp: TargetPlan, built: _Built, data: BuildData, record: _Record) -> Manifest:
    config, target = p.config, tp.target
    bundle, artifact, gate = built.bundle, built.artifact, built.gate
    files = record.files
    used = data.calibration
    calibration = (
        CalibrationSummary(source=used.source, samples=len(used.samples), sha256=used.digest) if used else None
    )
    return Manifest(
        kiln_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        model=config.model.name,
        source=config.model.source,
        export_key=p.export_key,
        cache_key=tp.key,
        target=target.name,
        precision=target.precision,
        options=target.options,
        main_file=artifact.main_file,
        signature=bundle.signature,
        toolchain=versions((*CORE, *tp.spec.dists(target.precision))),
        # What the capture chose (an attention fallback) heads the artifact's own notes.
        execution=artifact.info.model_copy(update={"notes": [*bundle.notes, *artifact.info.notes]}),
        calibration=calibration,
        gate=gate,
        prune=bundle.prune,
        distillation=bundle.distillation,
        qat=artifact.qat,
        adapter=_adapter(config),
        gguf=_gguf(config),
        ensemble=config.model.ensemble,
        member=target.member,
        export_dir=bundle.path.name,
        golden=built.golden,
        search=record.search,
        build_seconds=round(built.seconds, 3),
        stages=record.stages,
        files=files,
        # What the runtime loads: the golden set ships beside it and is not the artifact's size.
        size_bytes=sum(f.bytes for f in files if not f.path.startswith(f"{GOLDEN}/")),
    )


def _adapter(config: KilnConfig) -> AdapterRecord | None:
    from kiln.capture.causal import adapter_digest

    if not config.model.adapters:
        return None
    path = config.root / config.model.adapters[0]
    return AdapterRecord(path=config.model.adapters[0], sha256=adapter_digest(path))


def _gguf(config: KilnConfig) -> GgufRecord | None:
    """A GGUF source's facts: its quantization type, its sha256, what the reference is."""
    from kiln.capture.gguf import gguf_record

    if source_kind(config.model.source) != "gguf":
        return None
    return gguf_record(gguf_file(config.model.source, config.root))


def export_only(
    config: KilnConfig, out_root: Path, progress: Progress = lambda _: None, check_memory: bool = True
) -> Path:
    """The export stage alone (``kiln export``); returns the (first model's) export folder. A model
    too large for this machine is refused as :func:`build` refuses it."""
    folders = []
    for each in per_adapter(config):
        p = plan(each, out_root)
        with BuildLock(p.model_dir):
            clean_debris(p.model_dir)
            folder = p.model_dir / "export"
            if up_to_date(folder, p.export_key, META) is None:
                stages = Stages(each.model.name, progress)
                loaded, distillation = _load_checked(each, stages, check_memory), None
                if each.recovery is not None and each.recovery.teacher is not None:
                    from kiln.gate.reference import BuildData

                    data = BuildData.load(each, loaded.signature)
                    loaded, distillation = distilled(p, loaded, data, progress)
                with stages.stage("export"):
                    _export(p, loaded, progress, distillation)
        folders.append(folder)
    return folders[0]
