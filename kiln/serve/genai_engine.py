"""``kiln serve`` on OpenVINO GenAI's continuous batching: the :class:`~kiln.serve.engine.Engine`
for an OpenVINO artifact that is an OpenVINO GenAI folder (:mod:`kiln.targets.openvino.genai`).

One ``openvino_genai.ContinuousBatchingPipeline`` (paged attention: one KV cache in blocks,
shared by every sequence) decodes all the active requests together: each ``step()`` runs one
forward pass over every running sequence, the prompts' prefills chunked into it (dynamic split
fuse), so concurrent requests share each pass instead of taking turns. One worker thread owns the
pipeline: it adds the admitted requests (``add_request`` with kiln's prompt ids, so the tokens are
kiln's), calls ``step()`` while any runs, and reads each request's new tokens from its
``GenerationHandle``; what the HTTP layer sees is what :class:`~kiln.serve.engine.StepScheduler`
gives (text through :class:`~kiln.serve.engine.TextTracker`, stop strings, the EOS counted and
never shown, ``max_tokens``), so streaming, usage, cancellation, the queue bound and the metrics
are the same. The pipeline is told to ignore the EOS: kiln ends the request on it (and on a stop
string) and cancels the handle, which the pipeline drops at its next step.

The CPU configuration is kiln's OpenVINO runner's (f32 compute and an f32 KV cache, for fp32 and
int4 weights alike, so greedy tokens equal kiln's); the cache holds ``max_active`` sequences of the
artifact's whole context (``num_kv_blocks``), and the pipeline runs at most ``max_active`` at once
(``max_num_seqs``). Sampling is the pipeline's (``do_sample``, ``temperature``, ``top_p``,
``top_k``, ``rng_seed``): a seed repeats its text on this engine, not kiln's engine's text.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.decoding import Sampling, Tokenizer
from kiln.serve.engine import (
    CANCELLED,
    ERROR,
    LENGTH,
    STOP,
    Closed,
    Event,
    GenerationRequest,
    Listener,
    Observer,
    QueueFull,
    TextTracker,
)

log = logging.getLogger("kiln.serve")

NAME = "openvino-genai"
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}  # as kiln's OpenVINO runner pins them
BLOCK = 16  # tokens a KV block holds, at most (the CPU plugin's blocks are this size or larger)


def scheduler_config(og: Any, context: int, max_active: int) -> Any:
    """A cache of ``max_active`` whole contexts, and at most ``max_active`` sequences at once."""
    config = og.SchedulerConfig()
    config.max_num_seqs = max_active
    config.num_kv_blocks = max_active * (math.ceil(context / BLOCK) + 1)
    config.cache_size = 0  # sized by num_kv_blocks
    config.dynamic_split_fuse = True
    config.enable_prefix_caching = False
    return config


def generation_config(og: Any, request: GenerationRequest) -> Any:
    config = og.GenerationConfig()
    config.max_new_tokens = request.max_tokens
    config.ignore_eos = True  # kiln ends the request on the EOS itself (counted, never shown)
    sampling: Sampling = request.sampling
    if sampling.temperature > 0:
        config.do_sample = True
        config.temperature = sampling.temperature
        if sampling.top_p is not None:
            config.top_p = sampling.top_p
        if sampling.top_k is not None:
            config.top_k = sampling.top_k
        config.rng_seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
    else:
        config.do_sample = False
    return config


@dataclass(eq=False)  # each request is itself: compared by identity
class GenaiSequence:
    """One request in the engine; ``handle`` is the pipeline's once it is added."""

    request: GenerationRequest
    on_event: Listener
    text: TextTracker
    engine: GenaiEngine
    handle: Any = None
    tokens: int = 0
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        """Queued: it leaves now; in the pipeline: the worker cancels its handle before the next step."""
        self.cancelled = True
        self.engine._dequeue(self)


class GenaiEngine:
    """Requests on one ``ContinuousBatchingPipeline``, stepped by one worker thread (see the module)."""

    name = NAME

    def __init__(
        self,
        folder: Path,
        tokenizer: Tokenizer,
        context: int,
        max_active: int,
        max_queue: int,
        observer: Observer | None = None,
        threads: int | None = None,
        thread_name: str = "kiln-genai",
    ) -> None:
        import openvino as ov
        import openvino_genai as og

        self.og, self.ov = og, ov
        properties: dict[str, Any] = dict(F32)
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.pipe = og.ContinuousBatchingPipeline(
            str(folder), scheduler_config(og, context, max_active), "CPU", properties
        )
        self.tokenizer = tokenizer
        self.max_active, self.max_queue = max_active, max_queue
        self.observer = observer
        self.eos = frozenset(tokenizer.eos_ids)
        self._ids = itertools.count()
        self._waiting: collections.deque[GenaiSequence] = collections.deque()
        self._active: list[GenaiSequence] = []
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)
        self._thread.start()

    # Engine

    def submit(self, request: GenerationRequest, on_event: Listener) -> GenaiSequence:
        seq = GenaiSequence(request, on_event, TextTracker(self.tokenizer, request.stop), self)
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down and takes no new requests; retry on another replica")
            room = max(self.max_active - len(self._active), 0)
            if len(self._waiting) >= self.max_queue + room:
                raise QueueFull(
                    f"{len(self._active)} sequences are decoding and {len(self._waiting)} requests wait, the most "
                    "this server takes; retry later, or start kiln serve with a larger --max-active or --max-queue"
                )
            self._waiting.append(seq)
            self._report()
            self._cond.notify()
        return seq

    def state(self) -> dict[str, int]:
        """Sequences in the pipeline, waiting, and in it but cancelled (dropped at the next step)."""
        with self._cond:
            cancelled = sum(s.cancelled and not s.done for s in self._active)
            return {"active": len(self._active), "queued": len(self._waiting), "cancelled": cancelled}

    def _dequeue(self, seq: GenaiSequence) -> None:
        with self._cond:
            if seq not in self._waiting:
                self._cond.notify()  # an idle-looking worker still steps to drop it
                return
            self._waiting.remove(seq)
            self._report()
        self._finish(seq, CANCELLED)

    def close(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closing = True
            if timeout is not None and self._deadline is None:
                self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join()

    # The worker

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._active and not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._active and not self._waiting:
                    return  # closing, and drained
                if self._deadline is not None and time.monotonic() > self._deadline:
                    for seq in (*self._active, *self._waiting):
                        seq.cancelled = True
                admitted = []
                while self._waiting and len(self._active) < self.max_active:
                    seq = self._waiting.popleft()
                    self._active.append(seq)
                    admitted.append(seq)
                turn = list(self._active)
                self._report()
            for seq in admitted:
                self._add(seq)
            for seq in turn:
                if seq.cancelled and not seq.done:
                    self._finish(seq, CANCELLED)
            if any(not s.done for s in turn):
                try:
                    self.pipe.step()
                except Exception as err:  # the runtime failed: every request in this step ends with it
                    log.exception("kiln serve: a continuous-batching step failed")
                    message = " ".join(str(err).split())[:2000]
                    for seq in turn:
                        if not seq.done:
                            self._finish(
                                seq, ERROR, error=f"the runtime failed on this request: {type(err).__name__}: {message}"
                            )
                for seq in turn:
                    if not seq.done:
                        self._read(seq)
            with self._cond:
                self._active = [s for s in self._active if not s.done]
                idle = not self._active
                self._report()
            if idle and self.pipe.has_non_finished_requests():
                self.pipe.step()  # drops the requests cancelled above, freeing their blocks

    def _add(self, seq: GenaiSequence) -> None:
        ids = self.ov.Tensor(np.asarray([seq.request.prompt], dtype=np.int64))
        try:
            seq.handle = self.pipe.add_request(next(self._ids), ids, generation_config(self.og, seq.request))
        except Exception as err:
            message = " ".join(str(err).split())[:2000]
            self._finish(seq, ERROR, error=f"the runtime refused this request: {type(err).__name__}: {message}")

    def _read(self, seq: GenaiSequence) -> None:
        handle = seq.handle
        new: list[int] = []
        while handle.can_read():
            for out in handle.read().values():
                new.extend(int(t) for t in out.generated_ids)
        for token in new:
            seq.tokens += 1
            if token in self.eos and not seq.request.ignore_eos:  # the EOS is counted, never shown
                self._finish(seq, STOP, seq.text.flush())
                return
            text, stopped = seq.text.add(token)
            if stopped:
                self._finish(seq, STOP, text)
                return
            if seq.tokens >= seq.request.max_tokens:
                self._finish(seq, LENGTH, text + seq.text.flush())
                return
            seq.on_event(Event(text, seq.tokens, first=seq.tokens == 1))
        if self._ended(handle):  # the pipeline ended it without a token that ends it here
            self._finish(seq, LENGTH, seq.text.flush())

    def _ended(self, handle: Any) -> bool:
        status = handle.get_status()
        return status != self.og.GenerationStatus.RUNNING and not handle.can_read()

    def _finish(self, seq: GenaiSequence, reason: str, text: str = "", error: str | None = None) -> None:
        if seq.done:
            return
        if seq.handle is not None and seq.handle.get_status() == self.og.GenerationStatus.RUNNING:
            seq.handle.cancel()  # its blocks are freed at the pipeline's next step
        seq.done = True
        if self.observer is not None:
            self.observer.finished(reason, len(seq.request.prompt), seq.tokens)
        seq.on_event(Event(text, seq.tokens, reason, error, first=seq.tokens == 1))

    def _report(self) -> None:
        if self.observer is not None:
            self.observer.queued(len(self._waiting))
            self.observer.active(len(self._active))


def is_genai_folder(folder: Path) -> bool:
    """An OpenVINO GenAI model folder: the IR under its own name and the tokenizer IRs."""
    from kiln.targets.openvino.genai import DETOKENIZER, MAIN, TOKENIZER

    return all((folder / name).is_file() for name in (MAIN, TOKENIZER, DETOKENIZER))
