"""benchmarks/studies/agreement.py: two suite runs' speed-ups side by side, and the 5 % bar."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "agreement.py"


def _run(root: Path, name: str, speedups: dict[str, float]) -> Path:
    """A fingerprint folder with one model whose cells have these speed-ups at batch 1."""
    cells = [{"key": "eager-fp32", "batch": 1, "status": "ok", "speedup_vs_eager": 1.0}]
    for key, value in speedups.items():
        cells.append(
            {"key": key, "batch": 1, "status": "ok", "speedup_vs_eager": value, "rounds": 12,
             "speedup_ci_low": value * 0.98, "speedup_ci_high": value * 1.02}
        )  # fmt: skip
    cells.append({"key": "tensorrt-fp16", "batch": 1, "status": "skipped", "speedup_vs_eager": None})
    folder = root / name / "digits"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"cells": cells}))
    return folder.parent


def _load():
    spec = importlib.util.spec_from_file_location("agreement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_within_the_bar_pass_and_one_outside_fails(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"onnxruntime-fp32": 4.0, "openvino-int8": 6.0})
    b = _run(tmp_path, "b", {"onnxruntime-fp32": 4.1, "openvino-int8": 6.6})
    module = _load()
    rows, agree, shared = module.table(module.speedups(a), module.speedups(b), 0.05)
    assert (agree, shared) == (1, 2)  # +2.5 % agrees, +10 % does not; eager and skipped cells are left out
    assert any("+2.5%" in row and "yes" in row for row in rows)
    assert any("+10.0%" in row and "**no**" in row for row in rows)

    out = tmp_path / "agreement.md"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(a), str(b), "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "1 of 2 speed-ups agree within 5%" in out.read_text()
    wide = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--within", "0.2"], capture_output=True)
    assert wide.returncode == 0
    none = subprocess.run([sys.executable, str(SCRIPT), str(a), str(tmp_path / "missing")], capture_output=True)
    assert none.returncode == 2


def _cell(value: float, halfwidth: float) -> dict:
    return {
        "speedup_vs_eager": value,
        "speedup_ci_low": value * (1 - halfwidth),
        "speedup_ci_high": value * (1 + halfwidth),
    }


def test_the_diagnosis_tells_a_too_wide_interval_from_a_host_that_changed() -> None:
    module = _load()
    key = ("digits", "onnxruntime-fp32", 1)
    wide = ("digits", "openvino-int8", 1)
    tight = ("digits", "aoti-fp32", 1)
    a = {key: _cell(4.0, 0.02), wide: _cell(6.0, 0.15), tight: _cell(2.0, 0.01)}
    b = {key: _cell(4.4, 0.02), wide: _cell(6.6, 0.15), tight: _cell(2.02, 0.01)}
    rows, agree, shared = module.table(a, b, 0.05)
    assert (agree, shared) == (1, 3)
    assert any("onnxruntime-fp32" in row and row.endswith("| **no** |") for row in rows)  # 4.0±2% vs 4.4±2%
    assert any("openvino-int8" in row and row.endswith("| yes |") for row in rows)  # ±15 % overlap
    text = "\n".join(module.diagnosis(a, b, 0.05))
    assert "Of the 2 that do not agree, 1 have overlapping intervals" in text and "1 moved" in text
    # The tight pairs agree almost surely, the ±15 % pair seldom: about 2.2 expected of 3.
    expected = float(re.search(r"Were nothing to change between the runs, ([0-9.]+) of 3", text).group(1))
    assert 2.0 < expected < 2.5
    # ±15 % needs (15/2.5)² = 36× the rounds (to first order on the log scale).
    widest = float(re.search(r"the widest ([0-9.]+)×", text).group(1))
    assert 33 < widest < 40


def test_who_moved_names_eager_when_it_alone_moved(tmp_path: Path) -> None:
    module = _load()
    a = {("cnn", "eager-fp32", 4): 100.0, ("cnn", "onnxruntime-int8", 4): 20.0, ("cnn", "openvino-fp32", 4): 50.0}
    b = {("cnn", "eager-fp32", 4): 80.0, ("cnn", "onnxruntime-int8", 4): 20.4, ("cnn", "openvino-fp32", 4): 50.0}
    rows = module.who_moved(a, b)
    # eager -20 %, the artifacts +0 % and +2 % (median +1 %): the batch's speed-ups follow eager, -20.8 %.
    assert rows[2] == "| cnn | 4 | -20.0% | +1.0% [+0.0% to +2.0%] | -20.8% |"
    assert module.who_moved({("cnn", "openvino-fp32", 4): 1.0}, {("cnn", "openvino-fp32", 4): 1.0}) == []
    # p50s reads the results, eager's cell included; cells without a latency are left out.
    folder = tmp_path / "run" / "cnn"
    folder.mkdir(parents=True)
    cells = [
        {"key": "eager-fp32", "batch": 1, "status": "ok", "latency": {"p50_ms": 3.0}},
        {"key": "tensorrt-fp16", "batch": 1, "status": "skipped"},
    ]
    (folder / "results.json").write_text(json.dumps({"schema": "kiln.results/2", "cells": cells}))
    assert module.p50s(folder.parent) == {("cnn", "eager-fp32", 1): 3.0}
