"""The driver of ``kiln fleet``: connect to (or start) a Ray cluster, plan against its live
nodes, submit every task with its dependencies, watch them, and merge what comes back.

- ``--address local`` starts an in-process cluster of this machine alone (``--jobs`` CPUs), with
  the resources ``kiln node`` would advertise here; anything else is handed to ``ray.init``.
- Tasks take their dependencies' outcomes as arguments, so Ray starts a build only after its
  export and a bench only after its builds. Ray re-runs a task whose worker died (``--retries``).
- While tasks run, the driver re-checks the live nodes: a task no live node can serve any more
  (its node left) is cancelled and reported; a task that is ready while the fleet makes no
  progress for ``--pending-timeout`` (no task of it running, none ending) is cancelled and
  reported too. A task queued behind running work waits as long as that work goes on.
- Ctrl-C cancels every submitted task (force: their workers stop, nothing half-published), shuts
  an in-process cluster down and exits 130.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import error_line
from kiln.fleet.errors import ClusterError
from kiln.fleet.plan import FleetPlan, Task, make_plan
from kiln.fleet.report import FleetResults, FleetSession, merge
from kiln.fleet.resources import here, serves
from kiln.fleet.store import Store
from kiln.fleet.suite import load_suite
from kiln.fleet.tasks import Outcome, run_task

Progress = Callable[[str], None]
POLL_S = 1.0
RECHECK_S = 5.0


@dataclass(frozen=True)
class FleetOptions:
    suite: Path
    address: str = "local"  # local | auto | host:port | ray://host:port
    store: str | None = None  # default OUT/store
    out: Path = Path("build/fleet")
    jobs: int | None = None  # CPUs of an in-process cluster (default: this machine's)
    only: tuple[str, ...] = ()  # model names
    rebench: bool = False
    retries: int = 2
    pending_timeout: float = 600.0
    verbose: bool = False
    kind: str | None = None  # the in-process cluster's kind name (default: the fingerprint's id)
    storage_options: dict[str, Any] = field(default_factory=dict)


def _ray() -> Any:
    if Path.home().joinpath(".ray", "auth_token").is_file():
        # ray start --head turns token auth on and writes the token there; Ray reads the mode
        # when it is imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError as err:
        raise ClusterError("kiln fleet needs Ray: pip install 'kiln[fleet]' -c constraints.txt") from err
    return ray


def connect(options: FleetOptions) -> bool:
    """Join the cluster (or start the in-process one); True when this call started Ray."""
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": options.verbose}
    if options.address == "local":
        cpus = options.jobs or os.cpu_count() or 1
        ray.init(
            address="local",
            num_cpus=cpus,
            resources=here(options.kind),
            include_dashboard=False,
            object_store_memory=128 * 2**20,
            **quiet,
        )
        return True
    try:
        ray.init(address=options.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(
            f"no Ray cluster at --address {options.address} ({error_line(err, 160, typed=False)}); start one with "
            "ray start --head and kiln node --address HEAD, or pass --address local"
        ) from err
    return True


def live_nodes() -> list[Mapping[str, float]]:
    return [n["Resources"] for n in _ray().nodes() if n.get("Alive")]


def run_fleet(options: FleetOptions, progress: Progress = lambda _: None) -> FleetResults:
    """Plan and run the suite on the cluster; write OUT/results.json, OUT/report.md and each
    run's reports under OUT/<kind>/<model>/."""
    started = time.perf_counter()
    suite = load_suite(options.suite, options.only)
    store = Store(options.store or options.out / "store", **options.storage_options)
    store.check()
    scratch = str((options.out / "scratch").resolve()) if options.address == "local" else None
    local = options.address == "local" and not _ray().is_initialized()
    owned = False
    try:
        if local:
            # This machine is the whole cluster: plan first, and start Ray only if there is work.
            nodes: list[Mapping[str, float]] = [
                {"CPU": float(options.jobs or os.cpu_count() or 1), **here(options.kind)}
            ]
        else:
            progress(f"connecting to {options.address}")
            owned = connect(options)
            nodes = live_nodes()
        plan = make_plan(suite, store, nodes, options.rebench, Path(scratch or "build"))
        progress(f"{len(plan.tasks)} tasks to run, {len(plan.done)} up to date, {len(plan.skipped)} no node can serve")
        outcomes: dict[str, Outcome] = {}
        if plan.tasks:
            if local:
                progress("starting an in-process Ray cluster")
                owned = connect(options)
            outcomes = _Watch(plan, store, options, scratch, progress).run()
    finally:
        if owned:
            _ray().shutdown()
    fleet = merge(suite, store, plan, outcomes, FleetSession(options.address, nodes, time.perf_counter() - started))
    fleet.write(options.out, store)
    return fleet


class _Watch:
    """Submission and the wait loop, with the node re-checks and the cancellation."""

    def __init__(
        self, plan: FleetPlan, store: Store, options: FleetOptions, scratch: str | None, progress: Progress
    ) -> None:
        self.plan, self.store, self.options, self.scratch, self.progress = plan, store, options, scratch, progress
        self.refs: dict[str, Any] = {}  # task id -> ObjectRef
        self.outcomes: dict[str, Outcome] = {}
        self.ready_since: dict[str, float] = {}
        self.last_progress = time.monotonic()  # when a task of this fleet last ran or ended

    def run(self) -> dict[str, Outcome]:
        ray = _ray()
        # A fresh worker per task (max_calls=1): toolchains keep what a build loaded for the life
        # of the process, and Ray reuses workers, so builds would pile up in one (as in kiln tune,
        # where a ResNet-50 search grew to 24 GB in one process; see kiln.pipeline.isolate).
        remote = ray.remote(max_calls=1)(run_task)
        try:
            for task in self.plan.tasks.values():
                upstream = [self.refs[d] for d in task.after if d in self.refs]
                self.refs[task.id] = remote.options(
                    num_cpus=task.request.cpus,
                    resources=task.request.resources,
                    max_retries=self.options.retries,
                    name=task.id,
                ).remote(task, self.store, self.scratch, self.options.verbose, *upstream)
            self._wait(ray)
        except BaseException:
            self._cancel(ray)
            raise
        return self.outcomes

    def _wait(self, ray: Any) -> None:
        by_ref = {ref: tid for tid, ref in self.refs.items()}
        last_check = time.monotonic()
        while len(self.outcomes) < len(self.refs):
            pending = [ref for ref, tid in by_ref.items() if tid not in self.outcomes]
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in done:
                tid = by_ref[ref]
                outcome = self._get(ray, ref, tid)
                blocked = [d for d in self.plan.tasks[tid].after if d in self.outcomes and not self.outcomes[d].usable]
                if outcome.host is None and blocked:  # it never ran: a dependency was cancelled or died
                    first = self.outcomes[blocked[0]]
                    outcome = Outcome(id=tid, status="skipped", reason=f"{first.id} {first.status}: {first.reason}")
                self._record(tid, outcome)
            if time.monotonic() - last_check >= RECHECK_S:
                last_check = time.monotonic()
                self._recheck(ray)

    def _get(self, ray: Any, ref: Any, tid: str) -> Outcome:
        from ray.exceptions import RayError, TaskCancelledError

        try:
            return ray.get(ref)
        except TaskCancelledError:
            return Outcome(id=tid, status="skipped", reason="cancelled")
        except RayError as err:
            # The worker died more often than --retries allows, or a dependency did.
            return Outcome(id=tid, status="failed", reason=error_line(err), exit_code=1)

    def _record(self, tid: str, outcome: Outcome) -> None:
        if tid in self.outcomes:
            return
        self.outcomes[tid] = outcome
        if outcome.host is not None:  # it ran: the fleet moved
            self.last_progress = time.monotonic()
        where = f" on {outcome.host}" if outcome.host else ""
        why = f": {outcome.reason}" if outcome.reason else ""
        self.progress(f"{tid}: {outcome.status}{where} ({outcome.seconds:.1f} s){why}")

    def _recheck(self, ray: Any) -> None:
        """Cancel what no live node can serve any more, or what no node took in time."""
        nodes = live_nodes()
        leased = self.store.leases()
        now = time.monotonic()
        if any(self.plan.tasks[t].key in leased for t in self.refs if t not in self.outcomes):
            self.last_progress = now  # a task of this fleet is running: the queue moves
        for tid, ref in self.refs.items():
            if tid in self.outcomes:
                continue
            task: Task = self.plan.tasks[tid]
            if not any(serves(task.request, node) for node in nodes):
                ray.cancel(ref, force=True)
                self._record(tid, Outcome(id=tid, status="skipped", reason="the nodes that could serve it left"))
                continue
            if all(d in self.outcomes or d not in self.refs for d in task.after):
                since = self.ready_since.setdefault(tid, now)
                if stalled(since, self.last_progress, now, self.options.pending_timeout):
                    ray.cancel(ref, force=True)
                    why = (
                        f"no node took it within --pending-timeout {self.options.pending_timeout:.0f} s "
                        "while no other task of the fleet ran"
                    )
                    self._record(tid, Outcome(id=tid, status="skipped", reason=why))

    def _cancel(self, ray: Any) -> None:
        for tid, ref in self.refs.items():
            if tid not in self.outcomes:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # the cluster may be gone already: cancel the rest
                    continue


def stalled(ready_since: float, last_progress: float, now: float, timeout: float) -> bool:
    """Whether a task ready since ``ready_since`` has waited ``timeout`` seconds with the fleet
    making no progress (``last_progress``: a task of it last running or ending). Waiting in a
    queue behind running work is not stalling: on a 2-CPU cluster the last builds of a suite
    start long after they became ready."""
    return now - max(ready_since, last_progress) > timeout
