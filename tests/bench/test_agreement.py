"""benchmarks/agreement.py: two suite runs' speed-ups side by side, and the 5 % bar."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "agreement.py"


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


def test_ratios_within_the_bar_pass_and_one_outside_fails(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"onnxruntime-fp32": 4.0, "openvino-int8": 6.0})
    b = _run(tmp_path, "b", {"onnxruntime-fp32": 4.1, "openvino-int8": 6.6})
    spec = importlib.util.spec_from_file_location("agreement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
