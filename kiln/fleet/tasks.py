"""What runs on a node: an export, a build or a bench task, each a plain function of its
:class:`~kiln.fleet.plan.Task` (Ray only ships and calls them).

Every task works in a private scratch folder of its node (so builds of one model run side by side
without waiting on the model folder's lock), fetches what it builds from out of the store, runs
kiln's own ``build`` or ``bench``, publishes what it made (write then commit), and answers an
:class:`Outcome`. A kiln error is an outcome, not an exception; a worker killed midway publishes
nothing, and Ray runs the task again.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from kiln.errors import KilnError, UnavailableError
from kiln.fleet.plan import Task
from kiln.fleet.store import Store

Status = Literal["built", "up to date", "failed", "skipped", "measured", "cached"]
SCRATCH_ENV = "KILN_FLEET_SCRATCH"


class Outcome(BaseModel):
    """What a task answers (and the driver records for tasks it never ran)."""

    id: str
    status: Status
    reason: str | None = None
    exit_code: int = 0
    host: str | None = None
    pid: int | None = None
    kind: str | None = None
    seconds: float = 0.0
    results: dict[str, Any] | None = None  # a bench task's results.json

    @property
    def usable(self) -> bool:
        return self.status in ("built", "up to date")


def scratch_root(given: str | None) -> Path:
    """The node's scratch folder: the driver's choice for an in-process cluster, else
    ``$KILN_FLEET_SCRATCH``, else the system's temporary folder."""
    root = given or os.environ.get(SCRATCH_ENV) or str(Path(tempfile.gettempdir()) / "kiln-fleet")
    return Path(root)


def run_task(task: Task, store: Store, scratch: str | None, verbose: bool, *upstream: Outcome) -> Outcome:
    """Run one task here; ``upstream`` are the outcomes of the tasks it waited for."""
    start = time.perf_counter()
    if not verbose:
        from kiln.targets import quiet_toolchains

        warnings.filterwarnings("ignore")
        quiet_toolchains()
    blocked = next((u for u in upstream if u.status in ("failed", "skipped")), None)
    if blocked is not None:
        return _outcome(task, "skipped", start, f"{blocked.id} {blocked.status}: {blocked.reason}")
    lease = store.lease(task.key, {"task": task.id})
    work = scratch_root(scratch) / "tasks" / f"{task.id.replace(':', '-').replace('@', '-')}-{uuid.uuid4().hex[:8]}"
    try:
        work.mkdir(parents=True)
        if task.stage == "export":
            return _export(task, store, work, start)
        if task.stage == "build":
            return _build(task, store, work, start)
        return _bench(task, store, work, start)
    except KilnError as err:
        return _outcome(task, "failed", start, str(err), err.exit_code)
    finally:
        store.release(lease)
        shutil.rmtree(work, ignore_errors=True)


def _outcome(task: Task, status: Status, start: float, reason: str | None = None, code: int = 0, **kw: Any) -> Outcome:
    return Outcome(
        id=task.id,
        status=status,
        reason=reason,
        exit_code=code,
        host=socket.gethostname(),
        pid=os.getpid(),
        kind=task.kind,
        seconds=round(time.perf_counter() - start, 3),
        **kw,
    )


def _fetch(store: Store, task: Task, model_dir: Path, required: tuple[str, ...]) -> list[str]:
    """The task's inputs from the store into the model folder; returns the folders fetched."""
    fetched = []
    for folder, key in task.fetch.items():
        if store.ref(key) is not None:
            store.fetch(key, model_dir / folder)
            fetched.append(folder)
        elif folder in required:
            raise UnavailableError(f"{task.id}: {folder} ({key[:12]}) is not in the store {store.url}; run again")
    return fetched


def _export(task: Task, store: Store, work: Path, start: float) -> Outcome:
    from kiln.pipeline.build import distilled_key, export_only

    folder = export_only(task.config, work)
    store.publish(task.key, folder, {"task": task.id, "stage": "export"})
    distilled = folder.parent / "distilled"  # a distilled student's weights: builds reuse them
    if distilled.is_dir() and store.ref(distilled_key(task.key)) is None:
        store.publish(distilled_key(task.key), distilled, {"task": task.id, "stage": "distillation"})
    return _outcome(task, "built", start)


def _build(task: Task, store: Store, work: Path, start: float) -> Outcome:
    from kiln.pipeline.build import build, plan

    assert task.target is not None
    model_dir = work / task.model
    mine = plan(task.config, work).targets[task.target]
    if mine.key != task.key:
        # The key hashes toolchain versions: a node whose versions differ would publish an
        # artifact under a key the driver never asks for (and rebuild it on every run).
        raise UnavailableError(
            f"{task.id}: this node ({socket.gethostname()}) computes another cache key than the driver "
            f"(its {', '.join(mine.spec.dists(mine.target.precision)) or 'toolchain'} versions differ); "
            "run one kiln environment (one container image) on every node"
        )
    _fetch(store, task, model_dir, required=())
    result = build(task.config, work)[0]
    if result.manifest is not None:  # built (a gate breach is still an artifact, as with kiln build)
        store.publish(task.key, model_dir / task.target, {"task": task.id, "stage": "build"})
        for folder, key in task.fetch.items():
            if (model_dir / folder).is_dir() and store.ref(key) is None:  # a pruned variant made here
                store.publish(key, model_dir / folder, {"task": task.id, "stage": "export"})
    if result.error is not None:
        return _outcome(task, "failed", start, str(result.error), result.error.exit_code)
    code = result.exit_code
    breach = "; ".join(result.manifest.gate.breaches) if code and result.manifest else None
    return _outcome(task, "built", start, breach, code)


def _bench(task: Task, store: Store, work: Path, start: float) -> Outcome:
    from kiln.bench.run import BenchRun, bench
    from kiln.report import write_reports
    from kiln.results import Gates

    assert task.settings is not None
    model_dir = work / task.model
    fetched = _fetch(store, task, model_dir, required=("export", task.benched[0]))
    missing = [k for k in task.benched if k not in fetched]
    report_dir = work / "report"
    run = BenchRun(overrides=task.settings, out=work, report_dir=report_dir)
    results, _ = bench(model_dir, run)
    # Benchmarked from the folder: put back what kiln bench on the config records.
    results = results.model_copy(
        update={
            "config": task.config_path,
            "source": task.config.model.source,
            "gates": Gates(max_metric_drop=task.config.gates.max_metric_drop),
        }
    )
    write_reports(results, report_dir, html=True)
    if not missing:  # a partial run is not the planned one: measured again next time
        store.publish(task.key, report_dir, {"task": task.id, "stage": "bench", "kind": task.kind})
    reason = f"not built, not measured: {', '.join(missing)}" if missing else None
    return _outcome(task, "measured", start, reason, results=results.to_json())
