"""``kiln build``: export once, build each target, gate it against eager, write its manifest.

The order of work: validate (config, targets) -> plan cache keys from file contents (no torch
import, so an unchanged rebuild finishes in about a second) -> load the source and export if
stale -> for each stale target: compile into a temporary folder, load, run the parity gate and
the task metric, write the manifest, rename into place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.config import KilnConfig, TargetConfig
from kiln.errors import ConfigError, KilnError, ParityError, UnavailableError
from kiln.exporters import META, ExportBundle
from kiln.sources import LoadedModel, load_source, source_files
from kiln.spec import Signature
from kiln.store import (
    MANIFEST,
    MANIFEST_SCHEMA,
    BuildLock,
    atomic_dir,
    cache_key,
    clean_debris,
    file_entries,
    hash_files,
    up_to_date,
    write_json,
)
from kiln.targets import REGISTRY, availability
from kiln.versions import CORE, versions

Progress = Callable[[str], None]


@dataclass
class TargetResult:
    target: TargetConfig
    status: str  # built | up to date | failed
    manifest: dict[str, Any] | None = None
    error: KilnError | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.manifest and not self.manifest.get("gate", {}).get("passed", True):
            return ParityError.exit_code
        return 0


@dataclass
class BuildPlan:
    config: KilnConfig
    model_dir: Path
    export_key: str
    target_keys: dict[str, str] = field(default_factory=dict)
    variant_keys: dict[str, str] = field(default_factory=dict)  # prune slug -> its export key

    def export_key_for(self, target: TargetConfig) -> str:
        return self.variant_keys[target.prune.slug] if target.prune else self.export_key


def plan(config: KilnConfig, out_root: Path) -> BuildPlan:
    """Cache keys for every stage, from content: source bytes, config, toolchain versions."""
    files = source_files(config.model, config.root)
    export_key = cache_key(
        {
            "kiln": __version__,
            "source": hash_files(files, config.root),
            "model": config.model.model_dump(mode="json"),
            "export": config.export.model_dump(mode="json"),
            "versions": versions(CORE),
        }
    )
    p = BuildPlan(config, out_root / config.model.name, export_key)
    data_files = [
        f for spec in (config.calibration, config.evaluation) if spec for f in _data_files(spec.source, config.root)
    ]
    data_key = hash_files(data_files, config.root)
    recovery = config.recovery
    recovery_files = _data_files(recovery.source, config.root) if recovery else []
    for target in config.target:
        if target.prune and target.prune.slug not in p.variant_keys:
            p.variant_keys[target.prune.slug] = cache_key(
                {
                    "export": export_key,
                    "prune": target.prune.model_dump(mode="json"),
                    "recovery": recovery.model_dump(mode="json") if recovery else None,
                    "recovery_data": hash_files(recovery_files, config.root),
                    "data": data_key,  # data-driven importance and the metric before/after recovery
                    "versions": versions(("torch-pruning",)),
                }
            )
    for target in config.target:
        spec = REGISTRY[target.name]
        p.target_keys[target.key] = cache_key(
            {
                "export": p.export_key_for(target),
                "target": target.model_dump(mode="json"),
                "data": data_key,
                "calibration": config.calibration.model_dump(mode="json") if config.calibration else None,
                "evaluation": config.evaluation.model_dump(mode="json") if config.evaluation else None,
                "gates": config.gates.model_dump(mode="json"),
                "versions": versions(spec.requires),
            }
        )
    return p


def _data_files(source: str, root: Path) -> list[Path]:
    """Files whose bytes define a data spec: the callable's module, a .npz, or a folder of arrays."""
    ref, _, _ = source.partition(":") if source.split(":", 1)[0].endswith(".py") else (source, "", "")
    path = root / ref
    if path.is_file():
        return [path]
    return sorted(path.glob("*.np[yz]")) if path.is_dir() else []


def build(config: KilnConfig, out_root: Path, progress: Progress = lambda _: None) -> list[TargetResult]:
    """Build every configured target; failures are collected per target, not raised."""
    p = plan(config, out_root)
    with BuildLock(p.model_dir):
        clean_debris(p.model_dir)
        results: dict[str, TargetResult] = {}
        for target in config.target:
            manifest = up_to_date(p.model_dir / target.key, p.target_keys[target.key])
            if manifest is not None:
                results[target.key] = TargetResult(target, "up to date", manifest)
        stale = [t for t in config.target if t.key not in results]
        if stale:
            _build_stale(p, stale, results, progress)
        return [results[t.key] for t in config.target]


def _build_stale(p: BuildPlan, stale: list[TargetConfig], results: dict[str, TargetResult], progress: Progress) -> None:
    from kiln.reference import Reference

    config = p.config
    progress("loading the model source")
    loaded = load_source(config.model, config.root)
    bundle = _export(p, loaded, progress)
    dense = Reference(config, bundle, loaded)
    variants: dict[str | None, tuple[ExportBundle, Any]] = {None: (bundle, dense)}
    for target in stale:
        start = time.perf_counter()
        try:
            slug = target.prune.slug if target.prune else None
            if slug not in variants:
                variants[slug] = _pruned_variant(p, target, loaded, dense, progress)
            variant_bundle, reference = variants[slug]
            progress(f"building {target.name}:{target.precision}")
            manifest = _build_target(p, target, variant_bundle, reference, progress)
            results[target.key] = TargetResult(target, "built", manifest, seconds=time.perf_counter() - start)
        except KilnError as err:
            results[target.key] = TargetResult(target, "failed", error=err, seconds=time.perf_counter() - start)


def _pruned_variant(
    p: BuildPlan, target: TargetConfig, loaded: LoadedModel, dense: Any, progress: Progress
) -> tuple[ExportBundle, Any]:
    """The pruned model's own export stage (``export-<slug>/``) and its eager reference.

    Parity compares each pruned artifact with the pruned eager model; the task metric's drop is
    measured against the dense eager model, which is what a user ships instead.
    """
    import copy

    from kiln.exporters import export_model
    from kiln.prune import PruneContext, prune_model
    from kiln.reference import Reference
    from kiln.targets.base import RunOptions
    from kiln.targets.eager import TorchRunner

    assert target.prune is not None
    config, slug = p.config, target.prune.slug
    folder, key = p.model_dir / f"export-{slug}", p.variant_keys[slug]
    if up_to_date(folder, key, META) is None:
        if loaded.module is None:
            raise ConfigError(f"pruning needs a PyTorch model; {config.model.source!r} is an ONNX file")
        progress(f"pruning: {slug}")
        evalset = dense.evaluation()

        def evaluate(module: Any) -> float:
            from kiln.metrics import evaluate as run_metric

            runner = TorchRunner(module.eval(), bundle_sig, RunOptions(threads=config.bench.threads))
            return run_metric(runner.infer, evalset, config.root)

        bundle_sig = dense.bundle.signature
        ctx = PruneContext(
            signature=bundle_sig,
            calibration=dense.calibration(),
            recovery=config.recovery,
            root=config.root,
            evaluate=evaluate if evalset is not None else None,
            progress=progress,
        )
        pruned, report = prune_model(copy.deepcopy(loaded.module), target.prune, ctx)
        variant = LoadedModel(loaded.kind, bundle_sig, module=pruned.eval(), example=loaded.example)
        progress(f"capturing the pruned model ({slug})")
        with atomic_dir(folder) as tmp:
            export_model(variant, tmp, config.export.opset, config.export.strict, key, extra={"prune": report})
    bundle = ExportBundle.open(folder)
    variant = LoadedModel("pt2", bundle.signature, module=bundle.program().module())
    return bundle, Reference(config, bundle, variant, baseline=dense)


def _export(p: BuildPlan, loaded: LoadedModel, progress: Progress) -> ExportBundle:
    from kiln.exporters import export_model

    folder = p.model_dir / "export"
    if up_to_date(folder, p.export_key, META) is not None:
        bundle = ExportBundle.open(folder)
        if loaded.kind != "onnx":  # the source module may be the reference; keep names aligned
            loaded.signature = bundle.signature
        return bundle
    progress("capturing with torch.export and lowering to ONNX")
    with atomic_dir(folder) as tmp:
        bundle = export_model(loaded, tmp, p.config.export.opset, p.config.export.strict, p.export_key)
    bundle.path = folder
    loaded.signature = bundle.signature
    return bundle


def _context(p: BuildPlan, target: TargetConfig, bundle: ExportBundle, reference: Any, out_dir: Path) -> Any:
    from kiln.targets.base import CompileContext

    config = p.config
    return CompileContext(
        export=bundle,
        target=target,
        out_dir=out_dir,
        calibration=reference.calibration(),
        threads=config.bench.threads,
        evaluation=reference.evaluation(),
        max_metric_drop=config.gates.max_metric_drop,
        root=config.root,
    )


def _build_target(
    p: BuildPlan, target: TargetConfig, bundle: ExportBundle, reference: Any, progress: Progress
) -> dict[str, Any]:
    from kiln.targets import implementation, precision_missing, require
    from kiln.targets.base import RunOptions

    config = p.config
    impl = implementation(target.name)
    avail = availability(target.name)
    if not avail.build:
        # What needs no toolchain is still done and kept, for inspection, before exit 5.
        with atomic_dir(p.model_dir / f"{target.key}.prepared") as tmp:
            impl.prepare(_context(p, target, bundle, reference, tmp))
        require(target.name)
    if missing := precision_missing(target.name, target.precision):
        raise UnavailableError(missing)
    final = p.model_dir / target.key
    start = time.perf_counter()
    with atomic_dir(final) as tmp:
        ctx = _context(p, target, bundle, reference, tmp)
        impl.prepare(ctx)
        artifact = impl.compile(ctx)
        compile_seconds = time.perf_counter() - start
        options = RunOptions(threads=config.bench.threads)
        runner = impl.load(artifact, options) if avail.run else impl.simulated_runner(artifact, ctx)
        if runner is None:
            gate: dict[str, Any] = {"passed": True, "reason": f"not run: {avail.reason}", "simulated": False}
        else:
            progress(f"checking {target.name}:{target.precision} against eager")
            with runner:
                gate = reference.check(runner, target)
                gate["simulated"] = not avail.run
                artifact.info.update({k: v for k, v in runner.info().items() if k not in artifact.info})
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "kiln_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": config.model.name,
            "source": config.model.source,
            "export_key": p.export_key,
            "cache_key": p.target_keys[target.key],
            "target": target.name,
            "precision": target.precision,
            "options": target.options,
            "main_file": artifact.main_file,
            "signature": bundle.signature.to_dict(),
            "toolchain": versions(),
            "execution": artifact.info,
            "calibration": ctx.calibration.summary() if ctx.calibration else None,
            "gate": gate,
            "prune": bundle.prune,
            "export_dir": bundle.path.name,  # export/ or export-<prune slug>/: what FLOPs are counted on
            "build_seconds": round(compile_seconds, 3),
            "files": file_entries(tmp),
        }
        manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"])
        write_json(tmp / MANIFEST, manifest)
    return manifest


def load_artifact(folder: Path) -> Any:
    """An :class:`Artifact` from a built target folder (its manifest); for bench and package."""
    from kiln.store import read_json
    from kiln.targets.base import Artifact

    manifest = read_json(folder / MANIFEST)
    if manifest is None:
        raise ConfigError(f"{folder} has no readable {MANIFEST}; run kiln build first")
    return Artifact(
        target=manifest["target"],
        precision=manifest["precision"],
        path=folder,
        main_file=manifest["main_file"],
        signature=Signature.from_dict(manifest["signature"]),
        info=manifest.get("execution", {}),
        options=manifest.get("options", {}),
    )


def export_only(config: KilnConfig, out_root: Path, progress: Progress = lambda _: None) -> Path:
    """The export stage alone (``kiln export``); returns the export folder."""
    p = plan(config, out_root)
    with BuildLock(p.model_dir):
        clean_debris(p.model_dir)
        folder = p.model_dir / "export"
        if up_to_date(folder, p.export_key, META) is None:
            _export(p, load_source(config.model, config.root), progress)
    return folder
