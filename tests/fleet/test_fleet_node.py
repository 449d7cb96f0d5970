"""A real cluster on this machine: ``ray start --head`` (no kiln resources: it serves no kiln
task) and a ``kiln node`` worker, each a subprocess stopped by its own pid at the end; the
fleet runs every task on the kiln node. Token auth is Ray's default: ~/.ray/auth_token."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import tiny_suite

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # ray start --block stops what it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _nodes(address: str, env: dict[str, str]) -> int:
    run = subprocess.run(
        [str(BIN / "ray"), "status", f"--address={address}"], capture_output=True, text=True, env=env, timeout=60
    )
    return sum(1 for line in run.stdout.splitlines() if line.strip().startswith("1 node_"))


def test_a_kiln_node_joins_a_head_and_serves_the_fleet(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    logs = tmp_path / "logs"
    logs.mkdir()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"],
        stdout=(logs / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    node = None
    try:
        deadline = time.monotonic() + 120
        while _nodes(address, env) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        node = subprocess.Popen(
            [str(BIN / "kiln"), "node", f"--address={address}", "--num-cpus=1", "--kind=worker"],
            stdout=(logs / "node.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        while _nodes(address, env) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _nodes(address, env) == 2, (logs / "node.log").read_text()[-2000:]
        suite = tiny_suite(tmp_path, [{"name": "eager"}, {"name": "onnxruntime"}])
        out = tmp_path / "out"

        run = subprocess.run(
            [str(BIN / "kiln"), "fleet", str(suite), f"--address={address}", f"--out={out}"],
            capture_output=True,
            text=True,
            timeout=400,
        )

        assert run.returncode == 0, run.stderr[-3000:]
        fleet = json.loads((out / "results.json").read_text())
        assert {s["id"]: s["status"] for s in fleet["stages"]} == {
            "cnn:export": "built",
            "cnn:eager-fp32": "built",
            "cnn:onnxruntime-fp32": "built",
            "cnn:bench@worker": "measured",
        }
        assert [r["kind"] for r in fleet["runs"]] == ["worker"]
        assert len(fleet["nodes"]) == 2  # the head advertises nothing of kiln's: the worker did it all
    finally:
        for proc in (node, head):
            if proc is not None:
                _stop(proc)
    assert head.returncode is not None and (node is None or node.returncode is not None)
