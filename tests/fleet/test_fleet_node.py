"""A real cluster on this machine: ``ray start --head`` (no kiln resources: it serves no kiln
task) and a ``kiln node`` worker, each a subprocess stopped by its own pid at the end; the
fleet runs every task on the kiln node, and when that node leaves mid-build, the tasks it would
have run are reported, not left pending. Token auth is Ray's default: ~/.ray/auth_token."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kiln.fleet.store import Store
from tests.conftest import skip_unless
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


@contextmanager
def _cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A head serving no kiln task and one ``kiln node`` of kind "worker" joined to it: the
    head's address and the node's process; both stopped by their own pids at the end."""
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
        yield address, node
    finally:
        for proc in (node, head):
            if proc is not None:
                _stop(proc)
    assert head.returncode is not None and (node is None or node.returncode is not None)


def test_a_kiln_node_joins_a_head_and_serves_the_fleet(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with _cluster(tmp_path) as (address, _):
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


def test_a_node_that_leaves_has_its_pending_tasks_reported_and_publishes_nothing_half_done(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    skip_unless("aoti")  # a build of seconds: the node leaves while it compiles
    with _cluster(tmp_path) as (address, node):
        suite = tiny_suite(tmp_path, [{"name": "eager"}, {"name": "aoti"}])
        out = tmp_path / "out"
        store = Store(out / "store")
        driver = subprocess.Popen(
            [str(BIN / "kiln"), "fleet", str(suite), f"--address={address}", f"--out={out}", "--retries=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            building = None
            while building is None and time.monotonic() < deadline and driver.poll() is None:
                building = next(
                    (k for k, ls in store.leases().items() for lease in ls if "aoti" in lease.get("task", "")), None
                )
                time.sleep(0.1)
            assert building is not None, "the aoti build never started"
            _stop(node)  # the only node that serves kiln tasks leaves the live cluster
            _, err = driver.communicate(timeout=180)
        finally:
            if driver.poll() is None:
                driver.kill()

        assert "Traceback" not in err, err[-3000:]
        fleet = json.loads((out / "results.json").read_text())
        stages = {s["id"]: s for s in fleet["stages"]}
        assert stages["cnn:export"]["status"] == "built"
        # The bench was still waiting for its builds: no live node serves it, so it is reported.
        bench = stages["cnn:bench@worker"]
        assert bench["status"] == "skipped" and "the nodes that could serve it left" in bench["reason"], err[-3000:]
        assert fleet["runs"] == []
        # The build it was running either finished before the node went (Ray lets a stopping node
        # finish its running task) and is published whole, or was cut off and published nothing.
        aoti = stages["cnn:aoti-fp32"]
        if aoti["status"] == "built":
            store.fetch(building, tmp_path / "check")  # every file is there and matches its commit
        else:
            assert store.ref(building) is None
        assert "cnn:bench@worker" in (out / "report.md").read_text()
