"""A real `kiln build` in a subprocess, killed with SIGKILL mid-stage, then rebuilt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CNN, write_config

KILN = [sys.executable, "-m", "kiln.cli"]


@pytest.mark.slow
def test_killed_build_leaves_no_complete_looking_artifact_and_rebuild_recovers(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime"}, {"name": "aoti"}]})
    out = tmp_path / "build"
    model_dir = out / "cnn"
    proc = subprocess.Popen(
        [*KILN, "build", str(path), "--out", str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    # AOTInductor compiles for seconds: kill while its temporary folder exists.
    while time.monotonic() < deadline and not list(model_dir.glob(".tmp-aoti-fp32-*")):
        assert proc.poll() is None, "build ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (model_dir / "aoti-fp32").exists(), "a killed stage must not look complete"
    assert (model_dir / "onnxruntime-fp32" / "manifest.json").is_file(), "finished stages are kept"

    done = subprocess.run([*KILN, "build", str(path), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (model_dir / "aoti-fp32" / "manifest.json").is_file()
    assert not [p for p in model_dir.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert "up to date" in done.stdout  # onnxruntime was not rebuilt


@pytest.mark.slow
def test_two_builds_into_the_same_folder_do_not_corrupt_each_other(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime"}, {"name": "openvino"}]})
    out = tmp_path / "build"
    procs = [
        subprocess.Popen(
            [*KILN, "build", str(path), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # One built, the other waited on the lock and found everything up to date.
    assert sum(o[0].count("up to date") for o in outputs) == 2
