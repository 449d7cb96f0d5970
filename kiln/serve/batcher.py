"""Dynamic batching: concurrent requests gathered into one ``infer`` and split back.

One worker thread owns the runner: runtimes are not re-entrant in general, and one batch at a
time with the runtime's own intra-op threads is what kiln measured them with. The worker takes
the oldest waiting request and gathers the waiting requests that agree with it on every non-batch
dim, until the rows reach the cap or the oldest request has waited ``max_delay`` (so under load,
when the worker is busy, batches form from what queued meanwhile with no added wait). Gathered
requests are concatenated along the leading batch axis, run once and sliced back.

A batch that fails is rerun request by request, so one bad request (a runtime error on its
values) fails alone and the others are answered. Admission is bounded: past ``max_queue``
waiting requests a submit is refused (the server answers 503) instead of growing memory.
``close`` stops admitting and drains what was admitted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kiln.serve.protocol import RequestError
from kiln.spec import Arrays


class BatchObserver(Protocol):
    """What the batcher reports (the server's metrics)."""

    def queued(self, depth: int) -> None: ...

    def batch(self, requests: int, rows: int, queue_seconds: list[float], run_seconds: float) -> None: ...


class NoObserver:
    def queued(self, depth: int) -> None:
        pass

    def batch(self, requests: int, rows: int, queue_seconds: list[float], run_seconds: float) -> None:
        pass


@dataclass(frozen=True)
class BatchPolicy:
    """``max_rows`` 1 or ``max_delay`` 0 runs every request alone."""

    max_rows: int = 1
    max_delay: float = 0.0  # seconds the oldest request may wait for others
    max_queue: int = 256  # requests admitted and not yet running

    @property
    def gathers(self) -> bool:
        return self.max_rows > 1 and self.max_delay > 0


@dataclass(eq=False)  # identity: two requests with equal arrays are still two requests
class Job:
    inputs: Arrays
    rows: int  # its size along the batch axis (1 when the model has none)
    key: tuple[object, ...]  # what must agree for two requests to share a batch
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[Arrays] = field(default_factory=Future)


class Batcher:
    """Runs ``infer`` on one worker thread, gathering requests per ``policy``; ``batch_axis``
    says whether requests can be stacked at all (every input and output leads with the batch)."""

    def __init__(
        self,
        infer: Callable[[Arrays], Arrays],
        policy: BatchPolicy,
        batch_axis: bool,
        observer: BatchObserver | None = None,
    ) -> None:
        self._infer, self.policy, self.batch_axis = infer, policy, batch_axis
        self._observer = observer or NoObserver()
        self._pending: deque[Job] = deque()
        self._waiting = 0  # admitted, not yet running: the pending ones and those being gathered
        self._cond = threading.Condition()
        self._closing = False
        # While the worker gathers: the key it gathers for and the rows it could take. A submit
        # wakes it only when those rows could fill the batch; waking it on every arrival only
        # to wait again costs the event loop the GIL.
        self._gathering: tuple[object, ...] | None = None
        self._could_take = 0
        self._thread = threading.Thread(target=self._work, name="kiln-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._waiting

    def submit(self, inputs: Arrays) -> Future[Arrays]:
        """Admit one request; its future holds the outputs or the runtime's exception."""
        first = next(iter(inputs.values()))
        rows = int(first.shape[0]) if self.batch_axis and first.ndim else 1
        key = tuple((name, a.shape[1:] if self.batch_axis else a.shape, a.dtype.str) for name, a in inputs.items())
        job = Job(inputs, rows, key)
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down; send the request to another replica", 503)
            if self._waiting >= self.policy.max_queue:
                raise RequestError(
                    f"the queue is full ({self.policy.max_queue} requests waiting); retry later or raise --max-queue",
                    503,
                )
            self._pending.append(job)
            self._waiting += 1
            self._observer.queued(self._waiting)
            if self._gathering is None:
                self._cond.notify()
            elif job.key == self._gathering:
                self._could_take += job.rows
                if self._could_take >= self.policy.max_rows:
                    self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting, run what was admitted, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if not batch:
                return
            self._run(batch)

    def _gather(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return []
            first = self._pending.popleft()
            batch, rows = [first], first.rows
            if not (self.batch_axis and self.policy.gathers):
                return batch
            deadline = first.enqueued + self.policy.max_delay
            try:
                self._gathering = first.key
                while rows < self.policy.max_rows:
                    for job in list(self._pending):
                        if job.key == first.key and rows + job.rows <= self.policy.max_rows:
                            self._pending.remove(job)
                            batch.append(job)
                            rows += job.rows
                    self._could_take = rows
                    left = deadline - time.monotonic()
                    if rows >= self.policy.max_rows or left <= 0 or self._closing:
                        break
                    self._cond.wait(left)
            finally:
                self._gathering = None
            return batch

    def _run(self, batch: list[Job]) -> None:
        start = time.monotonic()
        with self._cond:
            self._waiting -= len(batch)
            self._observer.queued(self._waiting)
        waited = [start - job.enqueued for job in batch]
        rows = sum(job.rows for job in batch)
        try:
            outputs = self._infer(_stack(batch))
            parts = _split(outputs, batch, rows) if len(batch) > 1 else [outputs]
        except Exception as err:  # a runtime's failure goes back to its request(s)
            self._observer.batch(len(batch), rows, waited, time.monotonic() - start)
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            for job in batch:  # find the request that fails; the others are answered
                self._run_alone(job)
            return
        self._observer.batch(len(batch), rows, waited, time.monotonic() - start)
        for job, part in zip(batch, parts, strict=True):
            job.future.set_result(part)

    def _run_alone(self, job: Job) -> None:
        start = time.monotonic()
        try:
            result = self._infer(job.inputs)
        except Exception as err:
            job.future.set_exception(err)
        else:
            job.future.set_result(result)
        self._observer.batch(1, job.rows, [0.0], time.monotonic() - start)


def _stack(batch: list[Job]) -> Arrays:
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([job.inputs[name] for job in batch]) for name in batch[0].inputs}


def _split(outputs: Arrays, batch: list[Job], rows: int) -> list[Arrays]:
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise RuntimeError(
                f"output {name!r} has shape {list(array.shape)} for a batch of {rows} rows; it does not lead "
                "with the batch dim, so requests cannot share a batch (serve it with --max-delay-ms 0)"
            )
    parts, start = [], 0
    for job in batch:
        parts.append({name: array[start : start + job.rows] for name, array in outputs.items()})
        start += job.rows
    return parts
