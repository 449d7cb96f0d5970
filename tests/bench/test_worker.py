"""Worker isolation: a worker that crashes, errors or hangs becomes an error cell, and the run
goes on to measure the cells that work."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kiln.bench.harness import BenchOptions, CellPlan, run_cells

# Runs the real worker for every cell except one whose artifact path names the way to fail.
CHAOS = textwrap.dedent(
    """
    import json, os, signal, sys, time
    line = sys.stdin.readline()
    spec = json.loads(line)
    how = os.path.basename(spec["artifact"])
    if how == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "exit":
        os._exit(3)
    if how == "hang":
        time.sleep(60)
    if how == "crash-in-round":
        sys.stdout.write(json.dumps({"event": "ready", "load_s": 0, "import_s": 0, "first_ms": 0,
                                     "rss_before_load_bytes": 0, "info": {}}) + "\\n")
        sys.stdout.flush()
        sys.stdin.readline()
        os._exit(9)
    from kiln.bench.worker import main

    class Replay:  # the line already read, then the rest of stdin as it arrives
        def __init__(self):
            self.first = [line]

        def readline(self):
            return self.first.pop() if self.first else sys.stdin.readline()

        def __iter__(self):
            return iter(self.readline, "")

    sys.exit(main(Replay()))
    """
)

FAST = {"min_seconds": 0.05, "min_iters": 3, "warmup_seconds": 0.0, "warmup_iters": 1, "rounds": 2, "threads": 1}


def _options(tmp_path: Path, **kw: Any) -> BenchOptions:
    script = tmp_path / "chaos.py"
    script.write_text(CHAOS)
    return BenchOptions(**{**FAST, **kw, "worker_command": (sys.executable, str(script))})


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("segfault", "killed by SIGSEGV"),
        ("exit", "exited with status 3"),
        ("crash-in-round", "exited with status 9"),
    ],
)
def test_crashing_worker_becomes_error_cell(tmp_path: Path, how: str, expected: str) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / how)]
    cells = run_cells(plans, _options(tmp_path, batches=(1, 2)))
    assert [c["status"] for c in cells] == ["error", "error"]
    assert all(expected in c["reason"] for c in cells)


def test_silent_worker_is_stopped_after_timeout(tmp_path: Path) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / "hang")]
    cells = run_cells(plans, _options(tmp_path, timeout=1.0))
    assert cells[0]["status"] == "error" and "no answer within 1 s" in cells[0]["reason"]


def test_worker_error_answer_names_the_cause(tmp_path: Path) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / "missing-artifact")]
    cells = run_cells(plans, BenchOptions(**FAST))
    assert cells[0]["status"] == "error"
    assert "ConfigError" in cells[0]["reason"] and "manifest.json" in cells[0]["reason"]


def test_skipped_and_failed_plans_are_not_started(tmp_path: Path) -> None:
    plans = [
        CellPlan("coreml", "fp16", "coreml-fp16", skipped="run: needs macOS"),
        CellPlan("aoti", "fp32", "aoti-fp32", error="build failed: no g++"),
    ]
    cells = run_cells(plans, _options(tmp_path))
    assert [(c["status"], c["reason"]) for c in cells] == [
        ("skipped", "run: needs macOS"),
        ("error", "build failed: no g++"),
    ]


@pytest.mark.slow
def test_crash_does_not_stop_the_other_cells(tmp_path: Path, tiny_results: tuple[dict[str, Any], Path]) -> None:
    _, folder = tiny_results
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", folder / "eager-fp32"),
        CellPlan("eager", "fp32", "broken-fp32", tmp_path / "segfault"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", folder / "onnxruntime-fp32"),
    ]
    cells = run_cells(plans, _options(tmp_path, batches=(2,)))
    by_key = {c["key"]: c for c in cells}
    assert by_key["broken-fp32"]["status"] == "error"
    for key in ("eager-fp32", "onnxruntime-fp32"):
        cell = by_key[key]
        assert cell["status"] == "ok", cell.get("reason")
        assert cell["latency"]["samples"] >= FAST["min_iters"]
        assert cell["latency"]["timed_seconds"] >= FAST["min_seconds"]
        assert cell["peak_rss_bytes"] > 0 and cell["runtime"]["threads"] == 1
