"""Atomic stage folders, content cache keys, and the build lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from kiln.config import parse_config
from kiln.pipeline.build import BuildPlan, plan
from kiln.store import BuildLock, atomic_dir, cache_key, clean_debris, up_to_date, write_json
from tests.conftest import CNN


def test_atomic_dir_replaces_the_final_folder_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
        assert not final.exists()
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed mid-stage")
    assert (final / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_clean_debris_removes_what_interrupted_builds_left(tmp_path: Path) -> None:
    (tmp_path / ".tmp-aoti-fp32-1234").mkdir()
    (tmp_path / ".old-x-1").mkdir()
    (tmp_path / "eager-fp32").mkdir()
    clean_debris(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["eager-fp32"]


def test_up_to_date_needs_a_complete_folder_with_the_same_key(tmp_path: Path) -> None:
    assert up_to_date(tmp_path, "k") is None
    write_json(tmp_path / "manifest.json", {"cache_key": "k"})
    assert up_to_date(tmp_path, "k") == {"cache_key": "k"}
    assert up_to_date(tmp_path, "other") is None


def test_cache_key_depends_on_content_not_order() -> None:
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


def keys(p: BuildPlan) -> dict[str, str]:
    return {key: tp.key for key, tp in p.targets.items()}


def test_plan_keys_change_only_for_what_changed(tmp_path: Path) -> None:
    model_file = tmp_path / "m.py"
    model_file.write_text((Path(__file__).parents[1] / "models.py").read_text())
    base = {**CNN, "model": {**CNN["model"], "source": f"{model_file}:tiny_cnn"}}
    targets = [{"name": "onnxruntime"}, {"name": "openvino"}]
    first = plan(parse_config({**base, "target": targets}, tmp_path), tmp_path / "build")
    again = plan(parse_config({**base, "target": targets}, tmp_path), tmp_path / "build")
    assert first.export_key == again.export_key and keys(first) == keys(again)
    changed = [{"name": "onnxruntime", "options": {"calibration_method": "entropy"}}, {"name": "openvino"}]
    option = plan(parse_config({**base, "target": changed}, tmp_path), tmp_path / "build")
    assert keys(option)["onnxruntime-fp32"] != keys(first)["onnxruntime-fp32"]
    assert keys(option)["openvino-fp32"] == keys(first)["openvino-fp32"]
    model_file.write_text(model_file.read_text() + "\n# retrained\n")
    edited = plan(parse_config({**base, "target": targets}, tmp_path), tmp_path / "build")
    assert edited.export_key != first.export_key
    assert keys(edited)["openvino-fp32"] != keys(first)["openvino-fp32"]


def _hold(folder: str, seconds: float, log: str) -> None:
    with BuildLock(Path(folder)):
        with open(log, "a") as f:
            f.write(f"start {time.monotonic()}\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"end {time.monotonic()}\n")


def test_build_lock_serialises_two_builds(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 0.5, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["start", "end", "start", "end"]
