"""The fleet's ``results.json`` and ``report.md``: every cell with the fingerprint of the node
that measured it, grouped by hardware kind.

``runs`` holds one :class:`kiln.results.Results` per (model, hardware kind), exactly what
``kiln bench`` writes on that node (its own fingerprint, settings, peak and cells), so each run
is also written as ``OUT/<kind>/<model>/results.json`` and ``kiln report`` / ``kiln compare``
read it as they read any other. ``stages`` records every task: built, up to date (in the store
already), cached (a bench the store had), failed or skipped (with the reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln import __version__
from kiln.fleet.plan import FleetPlan, Task
from kiln.fleet.store import Store
from kiln.fleet.suite import Suite
from kiln.fleet.tasks import Outcome
from kiln.report import RESULTS, load_results, write_reports
from kiln.results import FailedCell, Fingerprint, MeasuredCell, Results
from kiln.store import write_json

FLEET_SCHEMA = "kiln.fleet/1"


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    stage: str
    model: str
    key: str
    status: str  # built | up to date | cached | measured | failed | skipped
    reason: str | None = None
    exit_code: int = 0
    host: str | None = None
    pid: int | None = None
    kind: str | None = None
    seconds: float = 0.0


class FleetRun(BaseModel):
    """One model measured on one hardware kind."""

    model_config = ConfigDict(extra="forbid")

    model: str
    kind: str
    host: str | None = None
    cached: bool = False  # read from the store: nothing was measured again
    results: Results


class FleetResults(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: Literal["kiln.fleet/1"] = Field(FLEET_SCHEMA, alias="schema")
    kiln_version: str
    created: str
    suite: str
    store: str
    address: str
    seconds: float
    nodes: list[dict[str, float]]  # each live node's Ray resources when the plan was made
    stages: list[StageRecord]
    runs: list[FleetRun]

    @property
    def exit_code(self) -> int:
        """The first failed stage's exit code (a gate breach included), else 0."""
        return next((s.exit_code for s in self.stages if s.exit_code), 0)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for stage in self.stages:
            found[stage.status] = found.get(stage.status, 0) + 1
        return found

    def fingerprints(self) -> dict[str, Fingerprint]:
        """The fingerprint each hardware kind measured with."""
        return {run.kind: run.results.fingerprint for run in self.runs}

    def write(self, out: Path, store: Store) -> list[Path]:
        """``OUT/results.json``, ``OUT/report.md`` and each run's own reports."""
        out.mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            write_reports(run.results, out / run.kind / run.model, html=True)
        write_json(out / RESULTS, self.model_dump(mode="json", by_alias=True))
        (out / "report.md").write_text(render_markdown(self))
        return [out / RESULTS, out / "report.md"]


def _record(task: Task, status: str, reason: str | None = None) -> StageRecord:
    return StageRecord(
        id=task.id, stage=task.stage, model=task.model, key=task.key, status=status, reason=reason, kind=task.kind
    )


@dataclass(frozen=True)
class FleetSession:
    """Where and how long a plan ran: the cluster's address, its live nodes' Ray resources when
    the plan was made, and the wall seconds of the whole run."""

    address: str
    nodes: list[Mapping[str, float]]
    seconds: float


def merge(
    suite: Suite, store: Store, plan: FleetPlan, outcomes: dict[str, Outcome], session: FleetSession
) -> FleetResults:
    """The plan and what came back: every task's record and every run's results."""
    stages: list[StageRecord] = []
    runs: list[FleetRun] = []
    for task in plan.done.values():
        stages.append(_record(task, "cached" if task.stage == "bench" else "up to date"))
        if task.stage == "bench":
            runs.append(_cached_run(store, task))
    for tid, task in plan.tasks.items():
        outcome = outcomes.get(tid) or Outcome(id=tid, status="skipped", reason="not run")
        record = _record(task, outcome.status, outcome.reason)
        stages.append(record.model_copy(update=outcome.model_dump(include={"exit_code", "host", "pid", "seconds"})))
        if outcome.results is not None:
            results = Results.model_validate(outcome.results)
            runs.append(FleetRun(model=task.model, kind=task.kind or "?", host=outcome.host, results=results))
    for model, why in suite.skipped:  # the suite's entries whose required files are missing
        stages.append(
            StageRecord(id=f"{model}:export", stage="export", model=model, key="", status="skipped", reason=why)
        )
    for tid, (task, why) in plan.skipped.items():
        if task is None:
            stages.append(
                StageRecord(id=tid, stage="bench", model=tid.split(":")[0], key="", status="skipped", reason=why)
            )
        else:
            stages.append(_record(task, "skipped", why).model_copy(update={"id": tid}))
    return FleetResults(
        kiln_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        suite=str(suite.path),
        store=store.url,
        address=session.address,
        seconds=round(session.seconds, 2),
        nodes=[dict(n) for n in session.nodes],
        stages=stages,
        runs=sorted(runs, key=lambda r: (r.model, r.kind)),
    )


def _cached_run(store: Store, task: Task) -> FleetRun:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kiln-fleet-") as tmp:
        ref = store.fetch(task.key, Path(tmp) / "run")
        results = load_results(Path(tmp) / "run" / RESULTS)
    return FleetRun(
        model=task.model, kind=task.kind or "?", host=ref.writer.split(":")[0], cached=True, results=results
    )


def kind_label(fp: Fingerprint) -> str:
    """A short name for a hardware kind: the CPU, its notable ISA features, its GPUs."""
    cpu = fp.cpu.replace("(R)", "").replace("(TM)", "").replace(" CPU", "").split(" @ ")[0].strip()
    notable = [f for f in ("amx_int8", "avx512_vnni", "avx512_bf16") if fp.flags.get(f)]
    gpus = ", ".join(dict.fromkeys(g.name or "GPU" for g in fp.gpus))
    return " ".join(p for p in (cpu, f"({', '.join(notable)})" if notable else "", f"+ {gpus}" if gpus else "") if p)


def _figure(cell: MeasuredCell | FailedCell | None) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, FailedCell):
        return f"{cell.status}"
    ratio = f" ({cell.speedup_vs_eager:.2f}×)" if cell.speedup_vs_eager is not None else ""
    return f"{cell.latency.p50_ms:.3g} ms{ratio}{' ⚠' if cell.latency.unstable else ''}"


def render_markdown(fleet: FleetResults) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(fleet.counts().items()))
    fps = fleet.fingerprints()
    lines = [
        "# kiln fleet",
        "",
        f"Suite `{fleet.suite}`, store `{fleet.store}`, cluster `{fleet.address}` ({len(fleet.nodes)} nodes); "
        f"{fleet.seconds:.1f} s wall. Stages: {counts}.",
        "",
        "## Hardware kinds",
        "",
        "| kind | hardware | cores | memory GiB | fingerprint |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {kind} | {kind_label(fp)} | {fp.physical_cores} | {fp.memory_gib} | `{fp.id}` |"
        for kind, fp in sorted(fps.items())
    ]
    models = sorted({run.model for run in fleet.runs})
    for model in models:
        runs = sorted((r for r in fleet.runs if r.model == model), key=lambda r: r.kind)
        kinds = [r.kind for r in runs]
        lines += ["", f"## {model}", "", "p50 latency (speed-up vs eager on the same kind).", ""]
        lines += ["| artifact | batch | " + " | ".join(kinds) + " |", "|---|---:|" + "---:|" * len(kinds)]
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for run in runs:
            for cell in run.results.cells:
                rows.setdefault((cell.key, cell.batch), {})[run.kind] = cell
        for (key, batch), by_kind in rows.items():
            lines.append(f"| {key} | {batch} | " + " | ".join(_figure(by_kind.get(k)) for k in kinds) + " |")
        lines += [""]
        for (key, batch), by_kind in rows.items():
            figures = [
                f"{_figure(cell).split(' (')[0]} on {kind_label(fps[kind])}"
                for kind, cell in by_kind.items()
                if isinstance(cell, MeasuredCell)
            ]
            if figures:
                lines.append(f"- {model} {key}, batch {batch}: " + ", ".join(figures))
    problems = [s for s in fleet.stages if s.status in ("failed", "skipped") or s.exit_code]
    lines += ["", "## Stages that did not complete", ""]
    lines += [f"- `{s.id}` {s.status}{f' (exit {s.exit_code})' if s.exit_code else ''}: {s.reason}" for s in problems]
    lines += [] if problems else ["None."]
    lines += ["", "## Every stage", "", "| stage | status | node | seconds |", "|---|---|---|---:|"]
    lines += [f"| {s.id} | {s.status} | {s.host or '-'} | {s.seconds:.1f} |" for s in fleet.stages]
    return "\n".join(lines) + "\n"


def load_fleet(path: Path) -> FleetResults:
    return FleetResults.model_validate(json.loads(path.read_text()))
