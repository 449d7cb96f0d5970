"""What ``tune.json`` holds, typed: the search as asked, every candidate with its figures and
verdict, the runs that measured them and the machine.

A *candidate* is one artifact (target x precision x options) measured at one run setting
(threads, and requests in flight in throughput mode). Times are milliseconds, throughput items
(batch rows) per second, sizes bytes, as in ``results.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln.results import Fingerprint, MachineLoad

TUNE_SCHEMA = "kiln.tune/1"
Objective = Literal["latency", "throughput"]
Stage = Literal["float", "precisions", "options", "threads", "final"]
# measured: built, gated and timed; rejected: the build's gate refused it (reason says why);
# failed: it did not build or its cell did not run; pruned: left out by the search (a dominated
# target, or settings only tried on the front); not tried: the budget ran out first.
Status = Literal["measured", "rejected", "failed", "pruned", "not tried"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Measurement(_Record):
    """One cell of one bench run: the candidate beside eager, under the harness of ``kiln bench``."""

    run: str  # the run folder under tune/runs/
    p50_ms: float
    p90_ms: float
    cv: float
    throughput: float  # items per second
    unstable: bool
    speedup_vs_eager: float | None = None


class Candidate(_Record):
    id: str  # <artifact>@t<threads>[r<requests>]
    artifact: str  # the folder under tune/artifacts/
    target: str
    precision: str
    options: dict[str, Any] = {}  # the [[target]] options it was built with
    threads: int
    requests: int = 1
    stage: Stage
    status: Status
    reason: str | None = None
    cache_key: str | None = None
    size_bytes: int | None = None
    metric: str | None = None
    metric_value: float | None = None
    metric_drop: float | None = None  # None: no [evaluation] in the config
    parity_worst: str | None = None
    build_seconds: float | None = None
    measurements: list[Measurement] = []
    front: bool = False
    winner: bool = False

    @property
    def latest(self) -> Measurement | None:
        return self.measurements[-1] if self.measurements else None


class Skipped(_Record):
    """A target x precision of the registry the search left out before building, and why."""

    target: str
    precision: str
    reason: str


class Run(_Record):
    """One ``kiln bench`` run over some candidates and eager: its folder holds results.json."""

    name: str
    stage: Stage
    threads: int
    requests: int
    cells: int
    machine_load: MachineLoad | None = None


class TuneResults(_Record):
    """``tune.json``: the source of truth for the printed front, tune.html and --write-config."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, ser_json_inf_nan="constants")

    schema_id: Literal["kiln.tune/1"] = Field(TUNE_SCHEMA, alias="schema")
    kiln_version: str
    created: str
    model: str
    config: str
    objective: Objective
    mode: Literal["latency", "throughput"]
    batch: int
    max_metric_drop: float | None
    budget_minutes: float
    elapsed_s: float
    budget_exhausted: bool
    fingerprint: Fingerprint
    skipped: list[Skipped] = []
    candidates: list[Candidate] = []
    runs: list[Run] = []
    winner: str | None = None
    notes: list[str] = []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def get(self, candidate_id: str) -> Candidate | None:
        return next((c for c in self.candidates if c.id == candidate_id), None)
