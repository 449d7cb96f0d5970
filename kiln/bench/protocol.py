"""The messages between the harness and a worker process: one JSON line each way, typed.

The parent sends a :class:`CellSpec` first, then :class:`RoundCommand` s and a :class:`StopCommand`;
the worker answers :class:`Ready`, one :class:`RoundAnswer` per round and :class:`Done`, or
:class:`ErrorAnswer` at any point (and exits).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kiln.results import Mode, RuntimeInfo, Threading


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationSpec(_Message):
    """A causal LM's cell: greedy generations from seeded prompts of these lengths."""

    prompt_tokens: list[int]
    new_tokens: int


class CellSpec(_Message):
    """What one worker loads and how it runs it."""

    artifact: str  # the built folder
    batch: int
    threads: int
    mode: Mode
    requests: int  # requests in flight per timed sample in throughput mode
    seed: int = 0
    generation: GenerationSpec | None = None


class RoundCommand(_Message):
    """Warm up (by time and count), then time runs until both minimums are met. A generative
    cell's run is one generation from each prompt length in turn."""

    cmd: Literal["round"] = "round"
    warmup_seconds: float
    warmup_iters: int
    min_seconds: float
    min_iters: int


class StopCommand(_Message):
    cmd: Literal["stop"] = "stop"


Command = Annotated[RoundCommand | StopCommand, Field(discriminator="cmd")]
COMMAND: TypeAdapter[RoundCommand | StopCommand] = TypeAdapter(Command)


class Ready(_Message):
    event: Literal["ready"] = "ready"
    load_s: float
    import_s: float  # importing the target's toolchain, before loading
    first_ms: float  # the first inference
    rss_before_load_bytes: int
    info: RuntimeInfo
    threading: Threading | None = None  # after the first inference: what the runtime loaded


class RoundAnswer(_Message):
    """The timed samples; a generative cell's ``seconds`` are its inter-token latencies, and
    ``ttft`` and ``itl`` the same timings per prompt length."""

    event: Literal["round"] = "round"
    seconds: list[float]
    warmup_iters: int
    page_faults: int | None = None  # minor page faults over the timed runs (None: not counted)
    ttft: dict[int, list[float]] = {}
    itl: dict[int, list[float]] = {}


class Done(_Message):
    event: Literal["done"] = "done"
    peak_rss_bytes: int


class ErrorAnswer(_Message):
    event: Literal["error"] = "error"
    error: str  # one line: the exception's type and first line


Answer = Annotated[Ready | RoundAnswer | Done | ErrorAnswer, Field(discriminator="event")]
ANSWER: TypeAdapter[Ready | RoundAnswer | Done | ErrorAnswer] = TypeAdapter(Answer)
