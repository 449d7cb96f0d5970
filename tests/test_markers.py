"""Markers of target tests come from the registry (tests/conftest.py): a test that runs TensorRT
is `gpu`, one that runs Core ML is `macos`, and both are `slow`, with no hand-written marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _collected(marker: str, path: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "-m", marker, path],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode in (0, 5), run.stdout[-2000:] + run.stderr[-2000:]
    return [line for line in run.stdout.splitlines() if "::" in line]


def test_running_tensorrt_engines_is_marked_gpu_from_the_registry() -> None:
    selected = _collected("gpu", "tests/targets/test_tensorrt.py")
    assert selected and all("engine" in test for test in selected), selected
    assert _collected("gpu and not slow", "tests/targets/test_tensorrt.py") == []


def test_running_core_ml_is_marked_macos_and_building_it_is_not() -> None:
    selected = _collected("macos", "tests/targets/test_coreml.py")
    assert selected and all("prediction" in test for test in selected), selected
    assert len(_collected("slow and not macos", "tests/targets/test_coreml.py")) > len(selected)
