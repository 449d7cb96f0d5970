"""examples/release/Makefile end to end: build, bench, compare, package --sign, verify --run; a
second run does nothing. Runs in a temporary build, dist, keys and baselines folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ship.conftest import ROOT

RELEASE = ROOT / "examples" / "release"


@pytest.mark.slow
@pytest.mark.target("openvino", stage="run")
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_release_pipeline_runs_end_to_end_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    kiln = Path(sys.executable).with_name("kiln")
    folders = {name: tmp_path / name for name in ("build", "dist", "keys", "baselines")}
    args = [f"{name.upper()}={path}" for name, path in folders.items()]
    # The gate under test is the pipeline, not this machine's noise: timings are not gated here
    # (tests/bench/test_compare.py tests the regression gate itself).
    args += [f"KILN={kiln}", "MAX_REGRESSION=900%"]
    make = ["make", "--no-print-directory", "-C", str(RELEASE)]

    done = subprocess.run([*make, "baseline", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(list(folders["baselines"].glob("*.json"))) == 1

    done = subprocess.run([*make, "release", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bundles = sorted(p.name for p in folders["dist"].glob("*.tar.gz"))
    assert bundles == [
        "digits-eager-fp32.tar.gz",
        "digits-onnxruntime-fp32.tar.gz",
        "digits-onnxruntime-int8.tar.gz",
        "digits-openvino-fp32.tar.gz",
    ]
    assert all((folders["dist"] / f"{b}.sig").is_file() for b in bundles)
    assert done.stdout.count("verified digits-") == len(bundles)

    # Nothing changed: make has nothing to do (-q exits 0 only when the file target and all it
    # depends on are current; `release` itself is phony).
    assert subprocess.run([*make, "-q", str(folders["dist"] / ".verified"), *args]).returncode == 0
    again = subprocess.run([*make, "release", *args], capture_output=True, text=True)
    assert again.returncode == 0 and "kiln " not in again.stdout.replace("release: ", "")
