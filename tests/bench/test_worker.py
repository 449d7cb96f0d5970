"""Worker isolation: a worker that crashes, errors or hangs becomes an error cell, and the run
goes on to measure the cells that work."""

from __future__ import annotations

import mmap
import platform
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kiln.bench.harness import CellPlan, run_cells
from kiln.bench.process import STEADY_TUNABLES, Launch, malloc_environment
from kiln.bench.worker import minor_faults
from kiln.config import BenchSettings
from kiln.results import FailedCell, MeasuredCell, Results

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
    if how == "garbage":
        sys.stdout.write("not json\\n")
        sys.stdout.flush()
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

FAST = BenchSettings(min_seconds=0.05, min_iters=3, warmup_seconds=0.0, warmup_iters=1, rounds=2, threads=1)


def _settings(**kw: Any) -> BenchSettings:
    return FAST.model_copy(update=kw).resolve(physical_cores=1)


def _chaos(tmp_path: Path, timeout: float = 600.0) -> Launch:
    script = tmp_path / "chaos.py"
    script.write_text(CHAOS)
    return Launch((sys.executable, str(script)), timeout)


def _failed(cells: list[MeasuredCell | FailedCell]) -> list[FailedCell]:
    assert all(isinstance(c, FailedCell) for c in cells), cells
    return [c for c in cells if isinstance(c, FailedCell)]


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("segfault", "killed by SIGSEGV"),
        ("exit", "exited with status 3"),
        ("crash-in-round", "exited with status 9"),
        ("garbage", "answered outside the protocol: not json"),
    ],
)
def test_crashing_worker_becomes_error_cell(tmp_path: Path, how: str, expected: str) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / how)]
    cells = _failed(run_cells(plans, _settings(batches=[1, 2]), launch=_chaos(tmp_path)))
    assert [(c.status, c.batch) for c in cells] == [("error", 1), ("error", 2)]
    assert all(expected in c.reason for c in cells)


def test_silent_worker_is_stopped_after_timeout(tmp_path: Path) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / "hang")]
    (cell,) = _failed(run_cells(plans, _settings(), launch=_chaos(tmp_path, timeout=1.0)))
    assert cell.status == "error" and "no answer within 1 s" in cell.reason


def test_worker_error_answer_names_the_cause(tmp_path: Path) -> None:
    plans = [CellPlan("eager", "fp32", "eager-fp32", tmp_path / "missing-artifact")]
    (cell,) = _failed(run_cells(plans, _settings()))
    assert cell.status == "error"
    assert "ConfigError" in cell.reason and "manifest.json" in cell.reason


def test_skipped_and_failed_plans_are_not_started(tmp_path: Path) -> None:
    plans = [
        CellPlan("coreml", "fp16", "coreml-fp16", skipped="run: needs macOS"),
        CellPlan("aoti", "fp32", "aoti-fp32", error="build failed: no g++"),
    ]
    cells = _failed(run_cells(plans, _settings(), launch=_chaos(tmp_path)))
    assert [(c.status, c.reason) for c in cells] == [
        ("skipped", "run: needs macOS"),
        ("error", "build failed: no g++"),
    ]


def test_run_cells_refuses_unresolved_settings() -> None:
    with pytest.raises(ValueError, match="resolve"):
        run_cells([], FAST)


@pytest.mark.slow
def test_crash_does_not_stop_the_other_cells(tmp_path: Path, tiny_results: tuple[Results, Path]) -> None:
    _, folder = tiny_results
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", folder / "eager-fp32"),
        CellPlan("eager", "fp32", "broken-fp32", tmp_path / "segfault"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", folder / "onnxruntime-fp32"),
    ]
    cells = run_cells(plans, _settings(batches=[2]), launch=_chaos(tmp_path))
    by_key = {c.key: c for c in cells}
    assert by_key["broken-fp32"].status == "error"
    for key in ("eager-fp32", "onnxruntime-fp32"):
        cell = by_key[key]
        assert isinstance(cell, MeasuredCell), cell.reason
        assert cell.latency.samples >= FAST.min_iters
        assert cell.latency.timed_seconds >= FAST.min_seconds
        assert cell.peak_rss_bytes > 0 and cell.runtime.threads == 1 and cell.batch == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc tunables need glibc (Linux)")
@pytest.mark.slow  # three bench workers per setting
@pytest.mark.parametrize("malloc", ["system", "steady"])
def test_malloc_setting_reaches_every_worker_and_faults_are_counted(
    tmp_path: Path, tiny_results: tuple[Results, Path], monkeypatch: pytest.MonkeyPatch, malloc: str
) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    _, folder = tiny_results
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", folder / "eager-fp32"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", folder / "onnxruntime-fp32"),
    ]
    cells = run_cells(plans, _settings(batches=[2], malloc=malloc))
    for cell in cells:
        assert isinstance(cell, MeasuredCell), cell.reason
        assert cell.page_faults_per_run is not None and cell.page_faults_per_run >= 0
        assert cell.threading is not None
        tunables = cell.threading.env.get("GLIBC_TUNABLES")
        assert tunables == (":".join(STEADY_TUNABLES) if malloc == "steady" else None)


def test_steady_malloc_keeps_the_users_own_tunables() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert malloc_environment("steady", {}) == {}
        return
    assert malloc_environment("system", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {}
    ours = ":".join(STEADY_TUNABLES)
    assert malloc_environment("steady", {}) == {"GLIBC_TUNABLES": ours}
    # glibc takes the last value of a tunable: the user's own come after ours, so they win.
    user = "glibc.malloc.trim_threshold=0"
    assert malloc_environment("steady", {"GLIBC_TUNABLES": user}) == {"GLIBC_TUNABLES": f"{ours}:{user}"}


def test_minor_faults_count_fresh_pages() -> None:
    size = 16 * 2**20
    before = minor_faults()
    with mmap.mmap(-1, size) as block:  # anonymous: every page is new to this process
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            block.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per 4 KiB page, whatever THP is set to
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
    assert minor_faults() - before >= 0.9 * size // mmap.PAGESIZE
