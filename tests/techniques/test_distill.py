"""Distillation into any student: ``[recovery].teacher`` is distilled into the model before it is
captured; the manifest records both models' metric; the student is trained once and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config, parse_config
from kiln.errors import ConfigError, SourceError
from kiln.pipeline.build import build, plan
from tests.conftest import skip_unless, write_config
from tests.techniques.tasks import TASKS, config

RECOVERY = {"source": f"{TASKS}:train_batches", "teacher": f"{TASKS}:teacher", "epochs": 12, "lr": 0.01}


def _config(tmp: Path, **recovery: object) -> Path:
    data = config("student", source=f"{TASKS}:student")
    return write_config(tmp, {**data, "recovery": {**RECOVERY, **recovery}, "target": [{"name": "eager"}]})


def test_a_teacher_needs_distillation_on() -> None:
    data = {**config("s", source="m.py:f"), "recovery": {"source": "m.py:t", "teacher": "m.py:big", "distill": False}}
    with pytest.raises(ConfigError, match="needs distill = true"):
        parse_config(data, Path("."))


def test_the_teacher_is_in_the_export_key(tmp_path: Path) -> None:
    first = plan(load_config(_config(tmp_path)), tmp_path / "build").export_key
    again = plan(load_config(_config(tmp_path)), tmp_path / "build").export_key
    other = plan(load_config(_config(tmp_path, teacher=f"{TASKS}:member_a")), tmp_path / "build").export_key
    longer = plan(load_config(_config(tmp_path, epochs=13)), tmp_path / "build").export_key
    assert first == again and len({first, other, longer}) == 3


def test_a_teacher_with_other_inputs_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    path = _config(tmp_path, teacher=f"{TASKS}:other_inputs")
    with pytest.raises(SourceError, match="does not accept the inputs"):
        build(load_config(path), tmp_path / "build")
    assert not (tmp_path / "build" / "student" / "distilled").exists()
    assert not (tmp_path / "build" / "student" / "export").exists()


@pytest.mark.slow
def test_the_student_learns_from_the_teacher_and_is_trained_once(tmp_path: Path) -> None:
    skip_unless("onnxruntime", run=True)
    data = config("student", source=f"{TASKS}:student")
    path = write_config(
        tmp_path, {**data, "recovery": RECOVERY, "target": [{"name": "eager"}, {"name": "onnxruntime"}]}
    )
    results = build(load_config(path), tmp_path / "build")
    assert all(r.status == "built" for r in results), [str(r.error) for r in results]
    report = results[1].manifest.distillation
    assert report is not None and report.teacher == RECOVERY["teacher"]
    assert report.student_params < report.teacher_params / 4
    assert report.student_metric_before < 0.5 < report.student_metric_after  # 4 classes: chance is 0.25
    assert report.teacher_metric >= report.student_metric_after - 0.05
    assert results[1].manifest.gate.passed
    # The gate's eager metric is the distilled student's.
    assert results[1].manifest.gate.evaluation.eager == pytest.approx(report.student_metric_after, abs=1e-6)
    stamp = (tmp_path / "build" / "student" / "distilled" / "student.pt").stat().st_mtime_ns
    # A new target rebuilds from the cached student: no second distillation.
    path = write_config(
        tmp_path,
        {**data, "recovery": RECOVERY, "target": [{"name": "eager"}, {"name": "onnxruntime"}, {"name": "openvino"}]},
    )
    skip_unless("openvino", run=True)
    again = build(load_config(path), tmp_path / "build")
    assert [r.status for r in again] == ["up to date", "up to date", "built"]
    assert (tmp_path / "build" / "student" / "distilled" / "student.pt").stat().st_mtime_ns == stamp
    assert again[2].manifest.distillation == report
