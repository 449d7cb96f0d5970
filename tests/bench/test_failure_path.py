"""The harness's one failure path: a worker that dies at any point of its life (in a round, at its
stop, when it is renewed) makes its cell an error cell, and the other cells of the batch are
measured as if it had never been there. A scripted worker stands in for the runtimes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from kiln.bench.harness import CellPlan, run_cells
from kiln.bench.process import Launch
from kiln.config import BenchSettings
from kiln.results import FailedCell, MeasuredCell

# Answers every round with 1 ms samples, except that the artifact's name may say when to die:
# "die-in-round-N" exits with status 9 when asked for round N, "die-at-stop" when asked to stop.
SCRIPTED = textwrap.dedent(
    """
    import json, os, sys
    spec = json.loads(sys.stdin.readline())
    how = os.path.basename(spec["artifact"])
    def answer(msg):
        sys.stdout.write(json.dumps(msg) + "\\n"); sys.stdout.flush()
    answer({"event": "ready", "load_s": 0, "import_s": 0, "first_ms": 1, "rss_before_load_bytes": 0, "info": {}})
    asked = 0
    for line in sys.stdin:
        if json.loads(line)["cmd"] == "stop":
            if how == "die-at-stop":
                os._exit(9)
            answer({"event": "done", "peak_rss_bytes": 1}); break
        asked += 1
        if how == f"die-in-round-{asked}":
            os._exit(9)
        answer({"event": "round", "seconds": [0.001] * 5, "warmup_iters": 1})
    """
)

SETTINGS = BenchSettings(
    rounds=4, max_rounds=4, min_seconds=0.01, min_iters=1, warmup_seconds=0.0, warmup_iters=1, threads=1
).resolve(physical_cores=1)


def _run(
    tmp_path: Path, names: dict[str, str], settings: BenchSettings = SETTINGS
) -> dict[str, MeasuredCell | FailedCell]:
    script = tmp_path / "scripted.py"
    script.write_text(SCRIPTED)
    plans = [CellPlan(key.split("-")[0], "fp32", key, tmp_path / how) for key, how in names.items()]
    return {c.key: c for c in run_cells(plans, settings, launch=Launch((sys.executable, str(script))))}


def test_a_worker_dying_mid_round_is_an_error_cell_and_the_others_are_measured(tmp_path: Path) -> None:
    cells = _run(
        tmp_path,
        {"eager-fp32": "ok", "onnxruntime-fp32": "ok", "openvino-fp32": "die-in-round-3", "aoti-fp32": "die-at-stop"},
    )
    for key in ("openvino-fp32", "aoti-fp32"):
        failed = cells[key]
        assert isinstance(failed, FailedCell) and failed.status == "error"
        assert "exited with status 9" in failed.reason
    eager, ort = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert isinstance(eager, MeasuredCell) and isinstance(ort, MeasuredCell)
    assert (eager.rounds, ort.rounds) == (4, 4)
    assert ort.speedup_rounds is not None and len(ort.speedup_rounds) == 4


def test_a_dead_baseline_leaves_the_other_cells_measured_without_a_speedup(tmp_path: Path) -> None:
    cells = _run(tmp_path, {"eager-fp32": "die-in-round-1", "onnxruntime-fp32": "ok"})
    eager, ort = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert isinstance(eager, FailedCell) and "exited with status 9" in eager.reason
    assert isinstance(ort, MeasuredCell) and ort.rounds == 4 and ort.speedup_vs_eager is None


def test_a_worker_dying_when_it_is_renewed_fails_only_its_cell(tmp_path: Path) -> None:
    two = SETTINGS.model_copy(update={"processes": 2})  # after round 2 each worker is stopped and started again
    cells = _run(tmp_path, {"eager-fp32": "ok", "onnxruntime-fp32": "ok", "openvino-fp32": "die-at-stop"}, two)
    failed = cells["openvino-fp32"]
    assert isinstance(failed, FailedCell) and "exited with status 9" in failed.reason
    eager, ort = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert isinstance(eager, MeasuredCell) and isinstance(ort, MeasuredCell)
    assert (eager.processes, ort.processes, ort.rounds) == (2, 2, 4)
