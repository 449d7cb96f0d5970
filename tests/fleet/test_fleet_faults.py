"""Faults: a worker killed mid-build is retried and its key published once, whole; Ctrl-C on the
driver cancels the fleet, stops its cluster and leaves nothing half-published."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from kiln.fleet.runner import FleetOptions, run_fleet
from kiln.fleet.store import Store
from tests.conftest import interruptible, skip_unless
from tests.fleet.conftest import tiny_suite

pytestmark = [pytest.mark.ray, pytest.mark.slow]
KILN = Path(sys.executable).with_name("kiln")


def _lease_of(store: Store, task: str, deadline: float) -> tuple[str, dict] | None:
    """The first lease of ``task`` in the store: (key, lease), polling until the deadline."""
    while time.monotonic() < deadline:
        for key, leases in store.leases().items():
            for lease in leases:
                if lease.get("task") == task:
                    return key, lease
        time.sleep(0.05)
    return None


def test_a_worker_killed_mid_build_is_retried_and_publishes_whole(ray_shutdown: None, tmp_path: Path) -> None:
    skip_unless("aoti")  # a build of seconds: the worker is killed while it compiles
    suite = tiny_suite(tmp_path, [{"name": "eager"}, {"name": "aoti"}])
    store = Store(tmp_path / "out" / "store")
    killed: dict[str, object] = {}

    def kill_first_attempt() -> None:
        found = _lease_of(store, "cnn:aoti-fp32", time.monotonic() + 240)
        if found is not None:
            killed["key"], lease = found
            killed["pid"] = lease["pid"]
            os.kill(lease["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_attempt, daemon=True)
    killer.start()
    fleet = run_fleet(FleetOptions(suite=suite, out=tmp_path / "out", jobs=2, retries=2))
    killer.join(10)

    assert "pid" in killed, "the aoti build never started"
    aoti = next(s for s in fleet.stages if s.id == "cnn:aoti-fp32")
    assert aoti.status == "built" and aoti.pid != killed["pid"]  # the retry, in another worker
    ref = store.ref(str(killed["key"]))
    assert ref is not None
    store.fetch(ref.key, tmp_path / "check")  # every file is there and matches its commit
    assert (tmp_path / "check" / "manifest.json").is_file()
    stale = store.leases().get(ref.key, [])
    assert [lease["pid"] for lease in stale] == [killed["pid"]]  # only the killed attempt's lease is left
    assert fleet.runs and {c.key for c in fleet.runs[0].results.cells} == {"eager-fp32", "aoti-fp32"}


def test_ctrl_c_cancels_the_fleet_and_publishes_nothing_half_done(tmp_path: Path) -> None:
    skip_unless("aoti")
    suite = tiny_suite(tmp_path, [{"name": "eager"}, {"name": "aoti"}])
    store = Store(tmp_path / "out" / "store")
    driver = subprocess.Popen(
        [str(KILN), "fleet", str(suite), "--out", str(tmp_path / "out"), "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        found = _lease_of(store, "cnn:aoti-fp32", time.monotonic() + 240)
        assert found is not None, "the aoti build never started"
        key, lease = found
        cluster = psutil.Process(driver.pid).children(recursive=True)

        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()

    assert driver.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert store.ref(key) is None  # the build was cancelled before its commit
    gone, alive = psutil.wait_procs(cluster, timeout=60)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
    assert lease["pid"] in {p.pid for p in gone}  # the building worker was stopped too
