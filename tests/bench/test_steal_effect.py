"""benchmarks/studies/steal_effect.py: each round's steal beside its speed-ups, per model and batch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "steal_effect.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("steal_effect", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, steal: list[float], follows: list[float], ignores: list[float]) -> Path:
    cells = [
        {"key": "eager-fp32", "batch": 1, "status": "ok", "round_steal": steal, "rounds_dropped": 3},
        {"key": "onnxruntime-fp32", "batch": 1, "status": "ok", "speedup_rounds": follows},
        {"key": "openvino-fp32", "batch": 1, "status": "ok", "speedup_rounds": ignores},
        {"key": "tensorrt-fp16", "batch": 1, "status": "skipped"},
    ]
    folder = root / "digits"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"settings": {"max_round_steal": 0.05}, "cells": cells}))
    return root


def test_rounds_drops_steal_and_the_correlation_with_the_ratios(tmp_path: Path) -> None:
    steal = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
    run = _run(tmp_path, steal, [2.0, 2.1, 2.2, 2.3, 2.4, 2.5], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    module = _module()
    (row,) = module.rows(run)
    # the constant ratios correlate with nothing and are left out; the rising ones follow the steal
    assert row["rounds"] == 6 and row["dropped"] == 3 and row["cells"] == 1
    assert row["rho_median"] == 1.0 and row["steal_max"] == 0.05
    text = "\n".join(module.render([row]))
    assert "| digits | 1 | 6 | 3 (over 5%) | 2.5% / 5.0% | +1.00 (1) |" in text
    assert module.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert module.spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None


def test_a_run_without_round_steal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "results.json").write_text(json.dumps({"cells": [{"key": "eager-fp32", "batch": 1}]}))
    assert _module().main([str(tmp_path)]) == 2
