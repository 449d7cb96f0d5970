"""Distillation into any student: ``[recovery].teacher`` is distilled into the model being built,
before it is captured, so every target builds the distilled student.

The teacher is any model source kiln loads (``path/file.py:fn``, ``model.pt2``, ``hf:folder``)
taking the student's inputs. Fine-tuning is :class:`kiln.train.finetune.Recovery` with the teacher as
its teacher (Hinton et al.'s softened-softmax KL for class scores, MSE for other outputs) and the
recovery data's labels for the task loss. The report holds the teacher's and the student's task
metric (before and after) on the build's evaluation set, and both models' parameter counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kiln.config import KilnConfig, ModelConfig
from kiln.errors import SourceError
from kiln.manifest import DistillReport
from kiln.spec import Signature

Progress = Callable[[str], None]


def teacher_model(config: KilnConfig) -> ModelConfig:
    """``[recovery].teacher`` as a model of its own, with the student's input spec."""
    assert config.recovery is not None and config.recovery.teacher is not None
    return config.model.model_copy(
        update={
            "source": config.recovery.teacher,
            "ensemble": None,
            "adapter": None,
            "name": f"{config.model.name}-teacher",
        }
    )


def load_teacher(config: KilnConfig, student: Signature) -> Any:
    """The teacher module, checked to take the student's inputs."""
    from kiln.capture.sources import accepts, load_source, source_kind

    model = teacher_model(config)
    if source_kind(model.source) in ("onnx", "ensemble"):
        raise SourceError(
            f"[recovery].teacher {model.source!r} must be a PyTorch model (path/file.py:fn, model.pt2 or hf:folder): "
            "distillation back-propagates through the student only, but runs the teacher in PyTorch"
        )
    loaded = load_source(model, config.root)
    if loaded.signature.inputs != student.inputs:
        raise SourceError(
            f"[recovery].teacher {model.source!r} takes other inputs than the model being built; a teacher takes the "
            "student's inputs (give [model].inputs and [model].dims, which both then use)"
        )
    accepts(loaded.module, student, f"[recovery].teacher {model.source!r}")
    return loaded.module.eval()


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def distil(
    student: Any,
    config: KilnConfig,
    sig: Signature,
    evaluate: Callable[[Any], float] | None,
    progress: Progress = lambda _: None,
) -> DistillReport:
    """Distil the teacher into ``student`` in place; returns the report."""
    from kiln.train.finetune import Recovery

    recovery = config.recovery
    assert recovery is not None and recovery.teacher is not None
    start = time.perf_counter()
    progress(f"distillation: loading the teacher {recovery.teacher}")
    teacher = load_teacher(config, sig)
    metric = (lambda m: round(float(evaluate(m.eval())), 6)) if evaluate else (lambda m: None)
    teacher_metric, before = metric(teacher), metric(student)
    trainer = Recovery(recovery, sig, config.root, teacher, progress)
    figures = trainer.fit(student, label="distillation")
    return DistillReport(
        teacher=recovery.teacher,
        teacher_params=_params(teacher),
        student_params=_params(student),
        teacher_metric=teacher_metric,
        student_metric_before=before,
        student_metric_after=metric(student),
        epochs=figures["epochs"],
        loss_first=figures["loss_first"],
        loss_final=figures["loss_final"],
        lr=recovery.lr,
        temperature=recovery.temperature,
        alpha=recovery.alpha,
        seconds=round(time.perf_counter() - start, 2),
    )
