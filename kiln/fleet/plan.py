"""The fleet's plan: per model an export, a build per target after it, and per hardware kind one
bench task after the builds it measures; each keyed by content so the store says what is done.

The plan is made on the driver from the live nodes' resources: a task no node can serve is
skipped here, with the reason, and never submitted (a Ray task no node can serve would wait
forever). A bench task measures every target of one model that its kind can run, in one
``kiln bench`` run, so the cells of one kind are interleaved over rounds exactly as ``make bench``
interleaves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kiln import __version__
from kiln.config import BenchSettings, KilnConfig
from kiln.fleet.resources import (
    Request,
    bench_request,
    build_request,
    export_request,
    kinds,
    run_request,
    serves,
    unmet,
)
from kiln.fleet.store import Store
from kiln.fleet.suite import Suite
from kiln.pipeline.build import BuildPlan, distilled_key, one_target, per_adapter
from kiln.pipeline.build import plan as build_plan
from kiln.store import cache_key
from kiln.targets import BASELINE

Stage = Literal["export", "build", "bench"]


@dataclass(frozen=True)
class Task:
    """One unit of work for some node; ``config`` is the model's (a build's holds its one target)."""

    id: str  # <model>:export | <model>:<target key> | <model>:bench@<kind>
    stage: Stage
    model: str
    key: str  # the store key it publishes
    request: Request
    config: KilnConfig
    after: tuple[str, ...] = ()  # ids of the tasks it waits for
    target: str | None = None  # a build's target key
    kind: str | None = None  # a bench's hardware kind
    benched: tuple[str, ...] = ()  # a bench's target keys (eager first)
    fetch: dict[str, str] = field(default_factory=dict)  # folder under the model -> store key
    settings: BenchSettings | None = None  # a bench's settings (the suite's over the model's)
    config_path: str | None = None


@dataclass
class FleetPlan:
    tasks: dict[str, Task]  # to run, in submission order (dependencies first)
    done: dict[str, Task]  # already in the store
    skipped: dict[str, tuple[Task | None, str]]  # id -> (task, why no node can serve it)


def _bench_key(bp: BuildPlan, benched: list[str], settings: BenchSettings, kind: str) -> str:
    return cache_key(
        {
            "kiln": __version__,
            "stage": "bench",
            "export": bp.export_key,
            "artifacts": [bp.targets[k].key for k in benched],
            "settings": settings.model_dump(mode="json"),
            "kind": kind,
        }
    )


@dataclass(frozen=True)
class _Planning:
    """What every model's tasks are planned against: the suite, the store, the live nodes (and
    them by hardware kind), whether to bench again what the store has, and the build scratch."""

    suite: Suite
    store: Store
    nodes: list[Mapping[str, float]]
    by_kind: dict[str, list[Mapping[str, float]]]
    rebench: bool
    scratch: Path


def make_plan(
    suite: Suite, store: Store, nodes: list[Mapping[str, float]], rebench: bool = False, scratch: Path | None = None
) -> FleetPlan:
    """Every task of the suite, split into what to run, what the store has, and what no live
    node can serve."""
    plan = FleetPlan({}, {}, {})
    planning = _Planning(suite, store, nodes, kinds(nodes), rebench, scratch or Path("build"))
    for config_path, suite_config in suite.configs:
        for config in per_adapter(suite_config):
            _plan_model(plan, planning, config, config_path)
    return plan


def _place(plan: FleetPlan, task: Task, planning: _Planning, fresh: bool) -> None:
    blocked = [d for d in task.after if d in plan.skipped]
    if blocked:
        plan.skipped[task.id] = (task, f"waits for {blocked[0]}, which cannot run: {plan.skipped[blocked[0]][1]}")
    elif fresh and planning.store.ref(task.key) is not None:
        plan.done[task.id] = task
    elif (why := unmet(task.request, planning.nodes)) is not None:
        plan.skipped[task.id] = (task, why)
    else:
        plan.tasks[task.id] = task


def _plan_model(plan: FleetPlan, planning: _Planning, config: KilnConfig, config_path: Path) -> None:
    nodes = planning.nodes
    name = config.model.name
    bp = build_plan(config, planning.scratch)
    exports = {"export": bp.export_key} | {f"export-{slug}": key for slug, key in bp.variant_keys.items()}
    export = Task(f"{name}:export", "export", name, bp.export_key, export_request(), config)
    _place(plan, export, planning, fresh=True)
    builds: dict[str, Task] = {}
    for tkey, tp in bp.targets.items():
        narrowed = one_target(config, tp.target)
        after = (export.id,) if export.id not in plan.done else ()
        fetch = {"export": bp.export_key}
        if config.recovery is not None and config.recovery.teacher is not None:
            fetch["distilled"] = distilled_key(bp.export_key)
        if tp.target.variant is not None:
            fetch[f"export-{tp.target.variant}"] = tp.export_key
        task = Task(
            f"{name}:{tkey}",
            "build",
            name,
            tp.key,
            build_request(tp.target.name, tp.target.precision),
            narrowed,
            after,
            target=tkey,
            fetch=fetch,
        )
        _place(plan, task, planning, fresh=True)
        builds[tkey] = task
    settings = planning.suite.bench_settings(config)
    runnable = [k for k in bp.targets if f"{name}:{k}" not in plan.skipped]
    for tkey in runnable:
        request = run_request(bp.targets[tkey].target.name)
        if not any(serves(request, node) for node in nodes):
            plan.skipped[f"{name}:{tkey}@bench"] = (builds[tkey], f"cannot be benchmarked: {unmet(request, nodes)}")
    if not planning.by_kind:
        plan.skipped[f"{name}:bench"] = (None, unmet(bench_request("any"), nodes) or "no kiln node")
    for kind, members in sorted(planning.by_kind.items()):
        benched = [k for k in runnable if any(serves(run_request(bp.targets[k].target.name), node) for node in members)]
        benched.sort(key=lambda k: bp.targets[k].target.name != BASELINE)
        if not benched:
            continue
        task = Task(
            f"{name}:bench@{kind}",
            "bench",
            name,
            _bench_key(bp, benched, settings, kind),
            bench_request(kind),
            config,
            tuple(builds[k].id for k in benched if builds[k].id not in plan.done),
            kind=kind,
            benched=tuple(benched),
            fetch=exports | {k: bp.targets[k].key for k in benched},
            settings=settings,
            config_path=str(config_path),
        )
        _place(plan, task, planning, fresh=not planning.rebench)
