"""The one way a model is exported into a cached stage folder: made and written only when the
folder's cache key differs, written whole or not at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.capture.exporters import ExportBundle, StageModel, export_stage
from kiln.capture.loaded import LoadedModel
from kiln.config import ExportConfig
from kiln.spec import Signature


def _maker(source: Path, made: list[str]) -> Callable[[], StageModel]:
    def model() -> StageModel:
        made.append(source.read_text())
        return StageModel(LoadedModel("onnx", Signature((), {}), onnx_path=source))

    return model


def test_a_stage_is_exported_once_per_cache_key(tmp_path: Path) -> None:
    source, folder, made = tmp_path / "model.onnx", tmp_path / "build" / "export", []
    source.write_text("first")
    bundle = export_stage(folder, "k1", ExportConfig(), _maker(source, made))
    assert made == ["first"] and bundle.path == folder and (folder / "model.onnx").read_text() == "first"

    source.write_text("second")
    again = export_stage(folder, "k1", ExportConfig(), _maker(source, made))
    assert made == ["first"] and again == ExportBundle.open(folder)  # up to date: the model is not even made

    export_stage(folder, "k2", ExportConfig(), _maker(source, made))
    assert made == ["first", "second"] and (folder / "model.onnx").read_text() == "second"


def test_a_failed_export_leaves_the_previous_stage_whole(tmp_path: Path) -> None:
    source, folder, made = tmp_path / "model.onnx", tmp_path / "build" / "export", []
    source.write_text("first")
    export_stage(folder, "k1", ExportConfig(), _maker(source, made))

    def broken() -> StageModel:
        return StageModel(LoadedModel("onnx", Signature((), {}), onnx_path=tmp_path / "missing.onnx"))

    with pytest.raises(FileNotFoundError):
        export_stage(folder, "k2", ExportConfig(), broken)
    assert (folder / "model.onnx").read_text() == "first"
    assert [p.name for p in folder.parent.iterdir()] == ["export"]
