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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.config import KilnConfig, TargetConfig, Tolerance
from kiln.errors import ConfigError, KilnError, ParityError
from kiln.exporters import META, TOKENIZER, ExportBundle
from kiln.golden import GOLDEN
from kiln.loaded import LoadedModel
from kiln.manifest import (
    MANIFEST_SCHEMA,
    AdapterRecord,
    CalibrationSummary,
    DistillReport,
    FileEntry,
    Gate,
    GoldenRecord,
    Manifest,
)
from kiln.sources import load_source, source_files, source_kind
from kiln.spec import Arrays, Signature
from kiln.store import (
    BuildLock,
    atomic_dir,
    cache_key,
    clean_debris,
    file_entries,
    hash_files,
    up_to_date,
    write_json,
)
from kiln.targets import (
    REGISTRY,
    Availability,
    Precision,
    TargetSpec,
    availability,
    check_config,
    qat_applies,
    target_options,
    tolerance_for,
)
from kiln.versions import CORE, versions

if TYPE_CHECKING:
    from kiln.quant.qat import QatSetup
    from kiln.reference import BuildData, Reference
    from kiln.targets.base import Artifact, CompileContext, Runner, Target, TargetOptions

Progress = Callable[[str], None]


@dataclass
class TargetResult:
    target: TargetConfig
    status: str  # built | up to date | failed
    manifest: Manifest | None = None
    error: KilnError | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.manifest is not None and self.manifest.gate.passed is False:
            return ParityError.exit_code
        return 0


@dataclass(frozen=True)
class TargetPlan:
    """One target as planned: its registry row, validated options, cache keys, availability."""

    target: TargetConfig
    spec: TargetSpec
    precision: Precision  # the registry's row for target.precision
    options: TargetOptions
    tolerance: Tolerance  # the precision's defaults with the config's overrides
    key: str  # the target stage's cache key
    export_key: str  # the export stage it builds from (the dense one or a pruned variant's)
    available: Availability

    @property
    def label(self) -> str:
        return f"{self.target.name}:{self.target.precision}"


@dataclass(frozen=True)
class BuildPlan:
    config: KilnConfig
    model_dir: Path
    export_key: str
    targets: dict[str, TargetPlan] = field(default_factory=dict)  # by target key
    # A variant (prune slug, or member-<name> of an ensemble) -> its export stage's key.
    variant_keys: dict[str, str] = field(default_factory=dict)


def plan(config: KilnConfig, out_root: Path) -> BuildPlan:
    """Check every target with the registry, then derive every stage's cache key from content:
    source bytes, config, data files, toolchain versions. An ensemble's members get their own
    rows here (:func:`with_members`), so every caller plans, builds and benches them alike."""
    config = with_members(config)
    check_config(config, source_kind(config.model.source))
    tokenizer = _tokenizer_dir(config)
    tokenizer_files = sorted(p for p in tokenizer.glob("*") if p.is_file()) if tokenizer else []
    data_files = [
        f
        for what, spec in (("[calibration]", config.calibration), ("[evaluation]", config.evaluation))
        if spec
        for f in _data_files(spec.source, config.root, what)
    ]
    data_key = hash_files(data_files, config.root)
    export_inputs = {
        "kiln": __version__,
        "source": hash_files(source_files(config.model, config.root) + tokenizer_files, config.root),
        # Whether members are also built alone changes no artifact.
        "model": config.model.model_dump(mode="json", exclude={"ensemble": {"compare_members"}}),
        "export": config.export.model_dump(mode="json"),
        "versions": versions(CORE),
    }
    if (distillation := _distill_inputs(config, data_key)) is not None:
        export_inputs["distillation"] = distillation  # the captured model is the distilled student
    export_key = cache_key(export_inputs)
    variant_keys = _variant_keys(config, export_key, data_key)
    targets: dict[str, TargetPlan] = {}
    for target in config.target:
        spec = REGISTRY[target.name]
        stage = variant_keys[target.variant] if target.variant else export_key
        key = cache_key(
            {
                "manifest": MANIFEST_SCHEMA,
                "export": stage,
                "target": target.model_dump(mode="json"),
                "data": data_key,
                "calibration": config.calibration.model_dump(mode="json") if config.calibration else None,
                "evaluation": config.evaluation.model_dump(mode="json") if config.evaluation else None,
                "gates": config.gates.model_dump(mode="json"),
                "generation": config.generation.model_dump(mode="json"),
                "generation_data": hash_files(_generation_files(config), config.root),
                "versions": versions(spec.dists(target.precision)),
                **_qat_inputs(config, target),
            }
        )
        options = target_options(target)
        targets[target.key] = TargetPlan(
            target,
            spec,
            spec.precision(target.precision),
            options,
            tolerance_for(target),
            key,
            stage,
            _availability(target, options),
        )
    return BuildPlan(config, out_root / config.model.name, export_key, targets, variant_keys)


def _recovery_files(config: KilnConfig) -> list[Path]:
    return _data_files(config.recovery.source, config.root) if config.recovery else []


def _distill_inputs(config: KilnConfig, data_key: str) -> dict[str, Any] | None:
    """What a distilled student depends on beyond its source: the recovery settings and data and
    the teacher's files (``None`` without ``[recovery].teacher``)."""
    from kiln.distill import teacher_model

    recovery = config.recovery
    if recovery is None or recovery.teacher is None:
        return None
    return {
        "recovery": recovery.model_dump(mode="json", exclude={"qat", "qat_epochs"}),
        "recovery_data": hash_files(_recovery_files(config), config.root),
        "teacher": hash_files(source_files(teacher_model(config), config.root), config.root),
        "data": data_key,  # the metrics before and after, in the report
    }


def _qat_inputs(config: KilnConfig, target: TargetConfig) -> dict[str, Any]:
    """A quantization-aware artifact's extra cache-key inputs: the recovery settings and data."""
    if not qat_applies(config, target):
        return {}
    assert config.recovery is not None
    return {
        "qat": config.recovery.model_dump(mode="json"),
        "qat_data": hash_files(_recovery_files(config), config.root),
    }


def _availability(target: TargetConfig, options: TargetOptions) -> Availability:
    """The registry's availability, narrowed by what the target says its options need to run
    (a delegate that only another device runs: built here, then gated by simulation or not run)."""
    from kiln.targets import implementation

    avail = availability(target.name, target.precision)
    blocker = implementation(target.name).run_blocker(options) if avail.run else None
    return replace(avail, run=False, reason=blocker) if blocker else avail


def _tokenizer_dir(config: KilnConfig) -> Path | None:
    """``[generation].tokenizer``: the tokenizer of a factory's causal LM (hf: folders carry theirs)."""
    ref = config.generation.tokenizer
    if ref is None:
        return None
    folder = config.root / ref
    if not folder.is_dir():
        raise ConfigError(f"[generation].tokenizer {folder} is not a folder; point it at a saved tokenizer")
    return folder


def _generation_files(config: KilnConfig) -> list[Path]:
    """The prompt and held-out text files of the generation gate."""
    spec = config.generation
    refs = [r for r in (spec.heldout, spec.prompts if isinstance(spec.prompts, str) else None) if r]
    return [config.root / r for r in refs if (config.root / r).is_file()]


def _variant_keys(config: KilnConfig, export_key: str, data_key: str) -> dict[str, str]:
    recovery = config.recovery
    recovery_files = _recovery_files(config)
    keys: dict[str, str] = {}
    for target in config.target:
        if target.member and target.variant not in keys:
            keys[f"member-{target.member}"] = cache_key({"export": export_key, "member": target.member})
        if target.prune and target.prune.slug not in keys:
            keys[target.prune.slug] = cache_key(
                {
                    "export": export_key,
                    "prune": target.prune.model_dump(mode="json"),
                    "recovery": recovery.model_dump(mode="json") if recovery else None,
                    "recovery_data": hash_files(recovery_files, config.root),
                    "data": data_key,  # data-driven importance and the metric before/after recovery
                    "versions": versions(("torch-pruning",)),
                }
            )
    return keys


def _data_files(source: str, root: Path, what: str = "data") -> list[Path]:
    """Files whose bytes define a data spec: the callable's module, a .npz, or a folder of arrays.
    A file or folder that does not exist is one line now, before any export."""
    ref, _, _ = source.partition(":") if source.split(":", 1)[0].endswith(".py") else (source, "", "")
    path = root / ref
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.np[yz]"))
    if ref.endswith((".py", ".npz", ".npy")) or "/" in ref or ":" not in source:
        raise ConfigError(f"{what} source {path} does not exist; check the path (relative to the config's folder)")
    return []  # package.module:fn, found on import


def per_adapter(config: KilnConfig) -> list[KilnConfig]:
    """A list of adapters is one model each (``<name>-<adapter folder>``): its own capture,
    artifacts and gate; one adapter (or none) keeps the model's name."""
    adapters = config.model.adapters
    if len(adapters) < 2:
        return [config]
    stems = [Path(a).name or f"adapter{i}" for i, a in enumerate(adapters)]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"[model].adapter folders need distinct names to name their models, got {stems}")
    return [
        config.model_copy(
            update={"model": config.model.model_copy(update={"adapter": a, "name": f"{config.model.name}-{stem}"})}
        )
        for a, stem in zip(adapters, stems, strict=True)
    ]


def with_members(config: KilnConfig) -> KilnConfig:
    """An ensemble whose members are compared: after each unpruned target, the same target for
    every member alone (``<key>-member-<name>``), gated against that member's eager model."""
    spec = config.model.ensemble
    if spec is None or not spec.compare_members:
        return config
    rows: list[TargetConfig] = []
    for target in config.target:
        rows.append(target)
        if target.prune is None and target.member is None:
            rows += [target.model_copy(update={"member": name}) for name in spec.member_names()]
    unique = {row.key: row for row in rows}  # a member row the config also lists is kept once
    return config.model_copy(update={"target": list(unique.values())})


def one_target(config: KilnConfig, target: TargetConfig) -> KilnConfig:
    """The config with ``target`` as its only row (no member rows added: a member is its own row)."""
    model = config.model
    if model.ensemble is not None:
        model = model.model_copy(update={"ensemble": model.ensemble.model_copy(update={"compare_members": False})})
    return config.model_copy(update={"model": model, "target": [target]})


def build(config: KilnConfig, out_root: Path, progress: Progress = lambda _: None) -> list[TargetResult]:
    """Build every configured target (of every adapter's model); failures are collected per
    target, not raised."""
    return [r for each in per_adapter(config) for r in _build_model(each, out_root, progress)]


def _build_model(config: KilnConfig, out_root: Path, progress: Progress) -> list[TargetResult]:
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
            _build_stale(p, stale, results, progress)
        return [results[t.key] for t in p.config.target]


def _up_to_date(folder: Path, key: str) -> Manifest | None:
    manifest = Manifest.find(folder)  # one read of manifest.json per target
    return manifest if manifest is not None and manifest.cache_key == key else None


def _implementation(tp: TargetPlan) -> Target:
    from kiln.targets import implementation

    return implementation(tp.target.name)


def _build_stale(p: BuildPlan, stale: list[TargetPlan], results: dict[str, TargetResult], progress: Progress) -> None:
    from kiln.reference import BuildData, Reference

    config = p.config
    progress("loading the model source")
    loaded = load_source(config.model, config.root)
    # Data is checked against the input spec before the capture: a mismatch leaves nothing behind.
    progress("loading calibration and evaluation data")
    data = BuildData.load(config, loaded.signature)
    distillation = None
    if config.recovery is not None and config.recovery.teacher is not None:
        loaded, distillation = _distilled(p, loaded, data, progress)
    bundle = _export(p, loaded, progress, distillation)
    dense = Reference(config, bundle, loaded.module if loaded.kind != "onnx" else None, data)
    variants: dict[str | None, tuple[ExportBundle, Reference]] = {None: (bundle, dense)}
    for tp in stale:
        start = time.perf_counter()
        try:
            variant = tp.target.variant
            if variant not in variants:
                make = _member_variant if tp.target.member else _pruned_variant
                variants[variant] = make(p, tp.target, loaded, dense, progress)
            variant_bundle, reference = variants[variant]
            progress(f"building {tp.target.name}:{tp.target.precision}")
            manifest = _build_target(p, tp, variant_bundle, reference, progress)
            results[tp.target.key] = TargetResult(tp.target, "built", manifest, seconds=time.perf_counter() - start)
        except KilnError as err:
            results[tp.target.key] = TargetResult(tp.target, "failed", error=err, seconds=time.perf_counter() - start)


def _pruned_variant(
    p: BuildPlan, target: TargetConfig, loaded: LoadedModel, dense: Reference, progress: Progress
) -> tuple[ExportBundle, Reference]:
    """The pruned model's own export stage (``export-<slug>/``) and its eager reference.

    Parity compares each pruned artifact with the pruned eager model; the task metric's drop is
    measured against the dense eager model, which is what a user ships instead.
    """
    import copy

    from kiln.exporters import export_model
    from kiln.prune import PruneContext, prune_model
    from kiln.reference import Reference

    assert target.prune is not None
    config, slug = p.config, target.prune.slug
    folder, key = p.model_dir / f"export-{slug}", p.variant_keys[slug]
    sig = dense.bundle.signature
    if up_to_date(folder, key, META) is None:
        progress(f"pruning: {slug}")
        teacher = None
        if config.recovery is not None and config.recovery.teacher is not None:
            from kiln.distill import load_teacher

            teacher = load_teacher(config, sig)
        ctx = PruneContext(
            signature=sig,
            calibration=dense.data.calibration,
            recovery=config.recovery,
            root=config.root,
            evaluate=_evaluator(config, dense) if dense.data.evaluation is not None else None,
            progress=progress,
            teacher=teacher,
        )
        pruned, report = prune_model(copy.deepcopy(loaded.module), target.prune, ctx)
        variant = LoadedModel(loaded.kind, sig, module=pruned.eval(), example=loaded.example)
        progress(f"capturing the pruned model ({slug})")
        with atomic_dir(folder) as tmp:
            export_model(
                variant,
                tmp,
                config.export.opset,
                config.export.strict,
                key,
                prune=report,
                distillation=dense.bundle.distillation,
            )
    bundle = ExportBundle.open(folder)
    return bundle, Reference(config, bundle, bundle.program().module(), dense.data, baseline=dense)


def _member_variant(
    p: BuildPlan, target: TargetConfig, loaded: LoadedModel, dense: Reference, progress: Progress
) -> tuple[ExportBundle, Reference]:
    """One ensemble member alone: its own export stage (``export-member-<name>/``) and its own
    eager reference, so its gate and metric drop are measured against the member itself."""
    from kiln.exporters import export_model
    from kiln.reference import Reference

    assert target.member is not None and p.config.model.ensemble is not None
    variant = f"member-{target.member}"
    folder, key = p.model_dir / f"export-{variant}", p.variant_keys[variant]
    if up_to_date(folder, key, META) is None:
        index = p.config.model.ensemble.member_names().index(target.member)
        member = LoadedModel(loaded.kind, loaded.signature, module=loaded.module.members[index], example=loaded.example)
        progress(f"capturing ensemble member {target.member}")
        with atomic_dir(folder) as tmp:
            export_model(member, tmp, p.config.export.opset, p.config.export.strict, key)
    bundle = ExportBundle.open(folder)
    return bundle, Reference(p.config, bundle, bundle.program().module(), dense.data)


def _evaluator(config: KilnConfig, dense: Reference) -> Callable[[Any], float]:
    """The task metric of a PyTorch module under pruning, on the build's evaluation set."""
    assert dense.data.evaluation is not None
    return module_metric(config, dense.data, dense.bundle.signature)


def module_metric(config: KilnConfig, data: BuildData, sig: Signature) -> Callable[[Any], float]:
    """The task metric of a PyTorch module (its outputs named as a capture names them) on the
    build's evaluation set: what pruning, distillation and QAT measure before and after."""
    import torch

    from kiln.metrics import evaluate
    from kiln.tensors import flatten_outputs, set_threads, to_tensors

    evalset = data.evaluation
    assert evalset is not None

    def run(module: Any) -> float:
        set_threads(config.bench.threads)

        def infer(inputs: Arrays) -> Arrays:
            with torch.inference_mode():
                names, values = flatten_outputs(module(*to_tensors(sig, inputs)))
            return {n: v.detach().float().cpu().numpy() for n, v in zip(names, values, strict=True)}

        return evaluate(infer, evalset, config.root)

    return run


DISTILLED = "distilled.json"


def _distilled(
    p: BuildPlan, loaded: LoadedModel, data: BuildData, progress: Progress
) -> tuple[LoadedModel, DistillReport]:
    """The student with the teacher distilled into it: trained once, then kept under
    ``distilled/`` (its weights and report, published whole) for every later build."""
    import torch

    from kiln.distill import distil

    folder = p.model_dir / "distilled"
    if (meta := up_to_date(folder, p.export_key, DISTILLED)) is not None:
        loaded.module.load_state_dict(torch.load(folder / "student.pt", weights_only=True))
        return loaded, DistillReport.model_validate(meta["report"])
    evaluate = module_metric(p.config, data, loaded.signature) if data.evaluation is not None else None
    report = distil(loaded.module, p.config, loaded.signature, evaluate, progress)
    with atomic_dir(folder) as tmp:
        torch.save(loaded.module.state_dict(), tmp / "student.pt")
        write_json(tmp / DISTILLED, {"cache_key": p.export_key, "report": report.model_dump(mode="json")})
    return replace(loaded, module=loaded.module.eval()), report


def _export(
    p: BuildPlan, loaded: LoadedModel, progress: Progress, distillation: DistillReport | None = None
) -> ExportBundle:
    from kiln.exporters import export_model

    folder = p.model_dir / "export"
    if up_to_date(folder, p.export_key, META) is not None:
        return ExportBundle.open(folder)
    tokenizer = _tokenizer_dir(p.config)
    if tokenizer is not None and loaded.tokenizer is None:
        loaded = replace(loaded, tokenizer=tokenizer)
    progress("capturing with torch.export and lowering to ONNX")
    with atomic_dir(folder) as tmp:
        bundle = export_model(
            loaded, tmp, p.config.export.opset, p.config.export.strict, p.export_key, distillation=distillation
        )
    return bundle.moved(folder)


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
        from kiln.distill import load_teacher

        teacher = load_teacher(config, sig)
    evaluate = module_metric(config, reference.data, sig) if reference.data.evaluation is not None else None
    return QatSetup(
        reference.module, config.recovery, config.root, teacher, evaluate, lambda m: progress(f"{tp.label}: {m}")
    )


def _build_target(
    p: BuildPlan, tp: TargetPlan, bundle: ExportBundle, reference: Reference, progress: Progress
) -> Manifest:
    from kiln.targets.base import RunOptions

    impl = _implementation(tp)
    if not tp.available.build:
        # What needs no toolchain is still done and kept, for inspection, before exit 5.
        with atomic_dir(p.model_dir / f"{tp.target.key}.prepared") as tmp:
            impl.prepare(_context(p, tp, bundle, reference, tmp, progress))
        tp.available.require(tp.label)
    with atomic_dir(p.model_dir / tp.target.key) as tmp:
        ctx = _context(p, tp, bundle, reference, tmp, progress)
        start = time.perf_counter()
        impl.prepare(ctx)
        artifact = impl.compile(ctx)
        seconds = time.perf_counter() - start
        if bundle.tokenizer_dir is not None:  # a causal LM's artifact carries its tokenizer
            shutil.copytree(bundle.tokenizer_dir, tmp / TOKENIZER, dirs_exist_ok=True)
        options = RunOptions(threads=ctx.threads)
        runner = impl.load(artifact, options) if tp.available.run else impl.simulated_runner(artifact, ctx)
        if artifact.reference is not None:  # QAT retrained the model: parity is against what it made
            from kiln.reference import Reference

            reference = Reference(p.config, bundle, artifact.reference, reference.data, baseline=reference)
        gate, golden = _gate(tp, artifact, runner, reference, progress)
        manifest = _manifest(p, tp, _Built(bundle, artifact, gate, seconds, tmp, golden), reference.data)
        manifest.write(tmp)
    return manifest


def _gate(
    tp: TargetPlan, artifact: Artifact, runner: Runner | None, reference: Reference, progress: Progress
) -> tuple[Gate, GoldenRecord]:
    """The artifact's verdict: run (or simulated) against eager, or built and not run here; and
    its golden set, written into the artifact folder (screened on the runner while it is open)."""
    if runner is None:
        gate = Gate.not_run(tp.available.reason)
        return gate, _golden(tp, artifact, None, reference, gate)
    progress(f"checking {tp.target.name}:{tp.target.precision} against eager")
    with runner:
        gate = reference.check(runner, tp.tolerance, real_data=tp.precision.calibrates)
        # What the runtime reports about how it runs, where the build recorded nothing else.
        artifact.info.update({k: v for k, v in runner.info().items() if not artifact.info.has(k)})
        golden = _golden(tp, artifact, runner, reference, gate)
    return gate.model_copy(update={"simulated": not tp.available.run}), golden


def _golden(
    tp: TargetPlan, artifact: Artifact, runner: Runner | None, reference: Reference, gate: Gate
) -> GoldenRecord:
    from kiln import golden

    sig = reference.bundle.signature
    setup = golden.GateSetup(tp.tolerance, reference.primary, tuple(reference.config.model.class_outputs))
    if sig.generative:
        prompts = [golden.Prompt(*p) for p in reference.golden_prompts()]
        return golden.write_prompts(artifact.path, prompts, gate.generation, setup)
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


def _manifest(p: BuildPlan, tp: TargetPlan, built: _Built, data: BuildData) -> Manifest:
    config, target = p.config, tp.target
    bundle, artifact, gate = built.bundle, built.artifact, built.gate
    files = [FileEntry(**entry) for entry in file_entries(built.folder)]
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
        execution=artifact.info,
        calibration=calibration,
        gate=gate,
        prune=bundle.prune,
        distillation=bundle.distillation,
        qat=artifact.qat,
        adapter=_adapter(config),
        ensemble=config.model.ensemble,
        member=target.member,
        export_dir=bundle.path.name,
        golden=built.golden,
        build_seconds=round(built.seconds, 3),
        files=files,
        # What the runtime loads: the golden set ships beside it and is not the artifact's size.
        size_bytes=sum(f.bytes for f in files if not f.path.startswith(f"{GOLDEN}/")),
    )


def _adapter(config: KilnConfig) -> AdapterRecord | None:
    from kiln.causal import adapter_digest

    if not config.model.adapters:
        return None
    path = config.root / config.model.adapters[0]
    return AdapterRecord(path=config.model.adapters[0], sha256=adapter_digest(path))


def export_only(config: KilnConfig, out_root: Path, progress: Progress = lambda _: None) -> Path:
    """The export stage alone (``kiln export``); returns the (first model's) export folder."""
    folders = []
    for each in per_adapter(config):
        p = plan(each, out_root)
        with BuildLock(p.model_dir):
            clean_debris(p.model_dir)
            folder = p.model_dir / "export"
            if up_to_date(folder, p.export_key, META) is None:
                loaded, distillation = load_source(each.model, each.root), None
                if each.recovery is not None and each.recovery.teacher is not None:
                    from kiln.reference import BuildData

                    data = BuildData.load(each, loaded.signature)
                    loaded, distillation = _distilled(p, loaded, data, progress)
                _export(p, loaded, progress, distillation)
        folders.append(folder)
    return folders[0]


def distilled_key(export_key: str) -> str:
    """The store key of a distilled student's ``distilled/`` folder (the fleet shares it)."""
    return cache_key({"stage": "distilled", "export": export_key})
