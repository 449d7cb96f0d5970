"""The pending timeout: a ready task queued behind running work waits as long as that work goes
on; one that waits while the fleet makes no progress is cancelled with the reason (no Ray: the
driver's re-check over a fake cluster)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import kiln.fleet.runner as runner
from kiln.fleet.plan import make_plan
from kiln.fleet.resources import here
from kiln.fleet.runner import FleetOptions, _Watch, stalled
from kiln.fleet.store import Store
from kiln.fleet.suite import load_suite
from tests.fleet.conftest import tiny_suite


def test_stalled_counts_from_the_later_of_ready_and_the_last_progress() -> None:
    assert not stalled(ready_since=0, last_progress=0, now=10, timeout=10)
    assert stalled(ready_since=0, last_progress=0, now=11, timeout=10)
    assert not stalled(ready_since=0, last_progress=5, now=11, timeout=10)  # something ran at 5
    assert not stalled(ready_since=8, last_progress=0, now=11, timeout=10)


class _FakeRay:
    def __init__(self) -> None:
        self.cancelled: list[object] = []

    def cancel(self, ref: object, force: bool) -> None:
        self.cancelled.append(ref)


def test_a_queued_build_is_not_cancelled_while_another_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite_path = tiny_suite(tmp_path, [{"name": "onnxruntime"}, {"name": "openvino"}])
    node = {"CPU": 2.0, **here(None)}
    store = Store(tmp_path / "store")
    plan = make_plan(load_suite(suite_path), store, [node])
    builds = [t for t in plan.tasks.values() if t.stage == "build"]
    assert len(builds) == 3  # eager, onnxruntime, openvino; their export is done (not submitted)
    options = FleetOptions(suite=suite_path, out=tmp_path / "out", pending_timeout=10)
    watch = _Watch(plan, store, options, None, lambda _: None)
    watch.refs = {t.id: t.id for t in builds}
    monkeypatch.setattr(runner, "live_nodes", lambda: [node])
    ray = _FakeRay()

    long_ago = time.monotonic() - 100
    running = store.lease(builds[0].key, {"task": builds[0].id})
    watch.ready_since = {t.id: long_ago for t in builds}
    watch.last_progress = long_ago
    watch._recheck(ray)
    assert ray.cancelled == [] and watch.outcomes == {}  # one runs: the other two are queued, not stuck

    store.release(running)
    watch.last_progress = long_ago  # and then nothing ran for 100 s
    watch._recheck(ray)
    assert sorted(ray.cancelled) == sorted(t.id for t in builds)
    reason = watch.outcomes[builds[1].id].reason or ""
    assert watch.outcomes[builds[1].id].status == "skipped" and "while no other task of the fleet ran" in reason
