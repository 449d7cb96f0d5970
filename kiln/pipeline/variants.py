"""The model variants a build makes before capture, each with its own export stage and eager
reference: a pruned model, an ensemble member alone, a student with its teacher distilled into it;
and the task metric of a PyTorch module, which pruning, distillation and QAT read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kiln.capture.exporters import ExportBundle, StageModel, export_stage
from kiln.capture.loaded import LoadedModel
from kiln.config import KilnConfig, TargetConfig
from kiln.manifest import (
    DistillReport,
)
from kiln.pipeline.planning import BuildPlan
from kiln.spec import Arrays, Signature
from kiln.store import (
    atomic_dir,
    up_to_date,
    write_json,
)

if TYPE_CHECKING:
    from kiln.gate.reference import BuildData, Reference

Progress = Callable[[str], None]


def pruned_variant(
    p: BuildPlan, target: TargetConfig, loaded: LoadedModel, dense: Reference, progress: Progress
) -> tuple[ExportBundle, Reference]:
    """The pruned model's own export stage (``export-<slug>/``) and its eager reference.

    Parity compares each pruned artifact with the pruned eager model; the task metric's drop is
    measured against the dense eager model, which is what a user ships instead.
    """
    import copy

    from kiln.gate.reference import Reference
    from kiln.train.prune import PruneContext, prune_model

    assert target.prune is not None
    config, prune, slug = p.config, target.prune, target.prune.slug
    sig = dense.bundle.signature

    def model() -> StageModel:
        progress(f"pruning: {slug}")
        teacher = None
        if config.recovery is not None and config.recovery.teacher is not None:
            from kiln.train.distill import load_teacher

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
        pruned, report = prune_model(copy.deepcopy(loaded.module), prune, ctx)
        variant = LoadedModel(loaded.kind, sig, module=pruned.eval(), example=loaded.example, notes=loaded.notes)
        progress(f"capturing the pruned model ({slug})")
        return StageModel(variant, prune=report, distillation=dense.bundle.distillation)

    bundle = export_stage(p.model_dir / f"export-{slug}", p.variant_keys[slug], config.export, model)
    return bundle, Reference(config, bundle, bundle.program().module(), dense.data, baseline=dense)


def member_variant(
    p: BuildPlan, target: TargetConfig, loaded: LoadedModel, dense: Reference, progress: Progress
) -> tuple[ExportBundle, Reference]:
    """One ensemble member alone: its own export stage (``export-member-<name>/``) and its own
    eager reference, so its gate and metric drop are measured against the member itself."""
    from kiln.gate.reference import Reference

    assert target.member is not None and p.config.model.ensemble is not None
    name, ensemble = target.member, p.config.model.ensemble

    def model() -> StageModel:
        index = ensemble.member_names().index(name)
        member = LoadedModel(
            loaded.kind,
            loaded.signature,
            module=loaded.module.members[index],
            example=loaded.example,
            notes=loaded.notes,
        )
        progress(f"capturing ensemble member {name}")
        return StageModel(member)

    variant = f"member-{name}"
    bundle = export_stage(p.model_dir / f"export-{variant}", p.variant_keys[variant], p.config.export, model)
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


def distilled(
    p: BuildPlan, loaded: LoadedModel, data: BuildData, progress: Progress
) -> tuple[LoadedModel, DistillReport]:
    """The student with the teacher distilled into it: trained once, then kept under
    ``distilled/`` (its weights and report, published whole) for every later build."""
    import torch

    from kiln.train.distill import distil

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
