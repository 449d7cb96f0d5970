"""Markers of target tests come from the registry (tests/conftest.py): a test that runs TensorRT
is `gpu`, one that runs Core ML is `macos`, and both are `slow`, with no hand-written marker."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One child pytest collects the TensorRT and Core ML tests (about 14 s): the full suite's, not the inner loop's.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
TENSORRT = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "targets").glob("test_tensorrt*.py"))
COREML = ["tests/targets/test_coreml.py"]

# A plugin for the child pytest: after conftest has applied its markers, print each test's.
PLUGIN = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        print("MARKS", item.nodeid, ",".join(sorted({m.name for m in item.iter_markers()})))
"""


@functools.cache
def _marks(tmp: str) -> dict[str, set[str]]:
    """Every TensorRT and Core ML test with the markers conftest gave it: one collection."""
    Path(tmp, "kiln_marks_plugin.py").write_text(PLUGIN)
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "kiln_marks_plugin", *TENSORRT, *COREML]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{tmp}:{ROOT}"},
    )
    assert run.returncode in (0, 5), run.stdout[-2000:] + run.stderr[-2000:]
    found = {}
    for line in run.stdout.splitlines():
        if line.startswith("MARKS "):
            _, nodeid, *names = line.split(" ")
            found[nodeid] = set(",".join(names).split(",")) - {""}
    assert found, run.stdout[-2000:]
    return found


def _selected(tmp: str, files: list[str], has: str, lacks: str | None = None) -> list[str]:
    return [
        test
        for test, marks in _marks(tmp).items()
        if test.split("::")[0] in files and has in marks and (lacks is None or lacks not in marks)
    ]


def test_running_tensorrt_engines_is_marked_gpu_from_the_registry(tmp_path_factory) -> None:
    tmp = str(tmp_path_factory.getbasetemp())
    selected = _selected(tmp, TENSORRT, "gpu")
    assert selected and all("engine" in test for test in selected), selected
    assert [t for t in selected if "slow" not in _marks(tmp)[t]] == []


def test_running_core_ml_is_marked_macos_and_building_it_is_not(tmp_path_factory) -> None:
    tmp = str(tmp_path_factory.getbasetemp())
    selected = _selected(tmp, COREML, "macos")
    assert selected and all("prediction" in test for test in selected), selected
    assert len(_selected(tmp, COREML, "slow", lacks="macos")) > len(selected)
