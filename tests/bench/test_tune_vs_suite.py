"""benchmarks/tune_vs_suite.py: a tune's winner against the suite's fastest gated cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_vs_suite.py"


def _cell(key: str, p50: float, drop: float | None = 0.0, parity: bool = True, batch: int = 1) -> dict:
    return {
        "key": key, "batch": batch, "status": "ok", "threads": 2, "parity_passed": parity,
        "accuracy": {"drop": drop} if drop is not None else None,
        "latency": {"p50_ms": p50, "throughput": 1e3 / p50},
    }  # fmt: skip


def _files(tmp_path: Path, winner_p50: float) -> tuple[Path, Path]:
    suite = {
        "cells": [
            _cell("eager-fp32", 10.0),
            _cell("openvino-int8", 2.0),
            _cell("onnxruntime-int8", 1.0, drop=0.05),  # faster, but over the metric budget
            _cell("aoti-int8", 0.5, parity=False),  # faster, but failed its gate
            _cell("openvino-fp32", 0.1, batch=8),  # another batch
        ]
    }
    winner = {"id": "openvino-int8-preset-mixed@t2", "threads": 2, "metric_drop": 0.001,
              "measurements": [{"p50_ms": winner_p50, "throughput": 1e3 / winner_p50}]}  # fmt: skip
    tune = {"model": "m", "batch": 1, "mode": "latency", "objective": "latency", "max_metric_drop": 0.01,
            "winner": winner["id"], "candidates": [winner]}  # fmt: skip
    (tmp_path / "tune.json").write_text(json.dumps(tune))
    (tmp_path / "results.json").write_text(json.dumps(suite))
    return tmp_path / "tune.json", tmp_path / "results.json"


def _run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_the_winner_is_held_to_the_fastest_cell_that_passed_the_same_gate(tmp_path: Path) -> None:
    tune, results = _files(tmp_path, winner_p50=1.6)
    run = _run(tune, results)
    assert run.returncode == 0, run.stderr
    assert "| suite's best | openvino-int8 |" in run.stdout and "1.25x the suite's best cell" in run.stdout
    slower = _run(*_files(tmp_path, winner_p50=2.5))
    assert slower.returncode == 1 and "slower" in slower.stdout
    results.write_text(json.dumps({"cells": []}))
    assert _run(tune, results).returncode == 2


def test_the_verdict_rests_on_the_tunes_own_run_of_the_suites_best_configuration(tmp_path: Path) -> None:
    tune_path, results = _files(tmp_path, winner_p50=2.5)  # slower than the suite's 2.0 across runs
    tune = json.loads(tune_path.read_text())
    winner = tune["candidates"][0]
    winner["measurements"][0]["run"] = "05-final-t2"
    same = {"id": "openvino-int8@t2", "artifact": "openvino-int8", "options": {}, "threads": 2,
            "measurements": [{"run": "04-threads-t2", "p50_ms": 2.0}, {"run": "05-final-t2", "p50_ms": 3.0}]}  # fmt: skip
    tune["candidates"].append(same)
    tune_path.write_text(json.dumps(tune))
    run = _run(tune_path, results)
    assert run.returncode == 0, run.stdout  # the machine was slower in the tune's run: 3.0 / 2.5 in one run
    assert "**1.20x** it" in run.stdout and "on the one run basis" in run.stdout
    assert "Raw, across the two runs: 0.80x" in run.stdout
    tune["winner"], tune["candidates"] = same["id"], [same]  # the winner is the suite's best configuration
    tune_path.write_text(json.dumps(tune))
    tie = _run(tune_path, results)
    assert tie.returncode == 0 and "a tie by construction" in tie.stdout
