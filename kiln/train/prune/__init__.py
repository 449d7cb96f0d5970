"""Pruning applied to the PyTorch model before capture, so every target builds from it.

Three methods, each where it pays:

- ``channel``: structured; whole channels are removed across dependent layers (torch-pruning),
  so FLOPs, parameters and latency drop on every runtime.
- ``magnitude``: unstructured; the smallest weights become zeros. Dense kernels gain no speed;
  the value is size (compressed, or stored sparse by Core ML).
- ``random``: unstructured like ``magnitude``, with seeded random weights zeroed: the baseline a
  pruning criterion has to beat (a report with both rows shows by how much).
- ``2:4``: semi-structured; 2 zeros in every 4 input channels of eligible layers, the pattern
  sparse tensor cores (TensorRT) and Core ML n:m use; verified after pruning.

:func:`prune_model` prunes in ``spec.steps`` steps (fine-tuning in between when ``[recovery]`` is
set), fine-tunes after the last step, and reports parameters, FLOPs, size, sparsity and the task
metric dense / before / after recovery.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import PruneConfig, RecoveryConfig
from kiln.data import CalibrationSet
from kiln.errors import ConfigError
from kiln.manifest import PruneReport
from kiln.spec import Signature
from kiln.train.prune.semistructured import check_2to4

__all__ = ["PruneContext", "check_2to4", "prune_model"]


@dataclass
class PruneContext:
    signature: Signature
    calibration: CalibrationSet | None = None
    recovery: RecoveryConfig | None = None
    root: Path = Path(".")
    evaluate: Callable[[Any], float] | None = None  # task metric of a module (higher is better)
    teacher: Any = None  # [recovery].teacher's module; else the unpruned model teaches (distill = true)
    progress: Callable[[str], None] = field(default=lambda _: None)


def _check(spec: PruneConfig, ctx: PruneContext) -> None:
    if spec.steps > 1 and ctx.recovery is None:
        raise ConfigError(
            f"prune.steps = {spec.steps} fine-tunes between steps, but there is no [recovery] section with "
            "training data; add [recovery] source = 'model.py:train_batches' or set steps = 1"
        )
    if spec.method == "2:4" and spec.steps > 1:
        raise ConfigError("prune.method = '2:4' is a fixed pattern applied in one step; set steps = 1")
    if spec.importance == "taylor" and spec.method != "channel":
        raise ConfigError(
            f"prune.importance = 'taylor' ranks channels; method {spec.method!r} ranks single weights by "
            "magnitude: use importance = 'magnitude'"
        )


def _pruner(module: Any, spec: PruneConfig, args: tuple[Any, ...], kept: list[str], ctx: PruneContext) -> Any:
    from kiln.train.prune.common import weight_layers

    if spec.method == "channel":
        from kiln.train.prune.structured import ChannelPruner

        return ChannelPruner(module, spec, args, kept, (ctx.signature, ctx.calibration))
    layers = weight_layers(module, kept)
    if spec.method in ("magnitude", "random"):
        from kiln.train.prune.unstructured import MaskPruner

        return MaskPruner(layers, spec)
    from kiln.train.prune.semistructured import SemiStructuredPruner

    return SemiStructuredPruner(layers, spec)


def _metric(ctx: PruneContext, module: Any) -> float | None:
    if ctx.evaluate is None:
        return None
    value = float(ctx.evaluate(module.eval()))
    return round(value, 6)


def prune_model(module: Any, spec: PruneConfig, ctx: PruneContext) -> tuple[Any, PruneReport]:
    """Prune ``module`` in place per ``spec`` (recovering accuracy when ``ctx.recovery`` is set).

    Returns the pruned module in eval mode (plain tensors, no pruning hooks: ready for
    ``torch.export``) and a JSON-able report for ``export.json`` and every pruned manifest.
    """
    from kiln.train.prune.common import example_inputs, protected, zero_fraction
    from kiln.train.prune.flops import footprint

    _check(spec, ctx)
    start = time.perf_counter()
    module = module.eval()
    args = example_inputs(ctx.signature)
    heads, kept = protected(module, args, spec.keep, spec.modules)
    before = footprint(module, args)
    trainer = None
    if ctx.recovery is not None:
        from kiln.train.finetune import Recovery

        teacher = (ctx.teacher or copy.deepcopy(module)).eval() if ctx.recovery.distill else None
        trainer = Recovery(ctx.recovery, ctx.signature, ctx.root, teacher, ctx.progress)
    ctx.progress("pruning: measuring the dense model")
    metric_dense = _metric(ctx, module)
    pruner = _pruner(module, spec, args, kept, ctx)
    steps: list[dict[str, Any]] = []
    for index in range(1, spec.steps + 1):
        ctx.progress(f"pruning: step {index}/{spec.steps} ({spec.method}, {spec.amount * index / spec.steps:.0%})")
        pruner.step(index)
        if index < spec.steps:
            assert trainer is not None
            entry = {"step": index, "metric": _metric(ctx, module)}
            entry.update(trainer.fit(module, label=f"fine-tune after step {index}/{spec.steps}"))
            steps.append(entry)
    metric_before = _metric(ctx, module)
    recovery: dict[str, Any] | None = None
    metric_after = None
    if trainer is not None:
        assert ctx.recovery is not None
        recovery = {**trainer.fit(module), "distill": ctx.recovery.distill, "lr": ctx.recovery.lr}
        if ctx.recovery.distill:
            recovery.update(temperature=ctx.recovery.temperature, alpha=ctx.recovery.alpha)
            recovery["teacher"] = ctx.recovery.teacher or "the unpruned model"
        recovery["total_epochs"] = trainer.epochs_run
        metric_after = _metric(ctx, module)
    details = pruner.finish()
    module = module.eval()
    after = footprint(module, args)
    report: dict[str, Any] = {
        "method": spec.method,
        "amount": 0.5 if spec.method == "2:4" else spec.amount,
        "importance": spec.importance,
        "scope": spec.scope,
        "steps": spec.steps,
        "heads": heads,
        "keep": list(spec.keep),
        "modules": list(spec.modules),
        "seed": spec.seed if spec.method == "random" else None,
        "params_before": before["params"],
        "params_after": after["params"],
        "flops_before": before["flops"],
        "flops_after": after["flops"],
        "flops_reduction": round(1 - after["flops"] / before["flops"], 4) if before["flops"] else None,
        "weight_bytes_before": before["weight_bytes"],
        "weight_bytes_after": after["weight_bytes"],
        "compressed_bytes_before": before["compressed_bytes"],
        "compressed_bytes_after": after["compressed_bytes"],
        "sparsity": round(zero_fraction(module, details["layers_pruned"]), 4),
        "layers_pruned": details.pop("layers_pruned"),
        "layers_kept": details.pop("layers_kept", kept),
        "metric_dense": metric_dense,
        "metric_before_recovery": metric_before,
        "metric_after_recovery": metric_after,
        "recovery": recovery,
        "iterations": steps,
        "seconds": round(time.perf_counter() - start, 2),
        **details,
    }
    return module, PruneReport.model_validate(report)
