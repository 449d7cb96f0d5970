"""Generation for ``kiln serve``: the engine a causal LM's requests run on, and kiln's own.

:class:`Engine` is the seam: the HTTP layer (:mod:`kiln.serve.llm`) submits a
:class:`GenerationRequest` and gets :class:`Event` s back (text as it grows, then why it ended)
through a callback, from whatever thread the engine runs on; it can cancel a request and close
the engine (drained or not). It speaks prompt ids in and text out, so an engine may decode
however its runtime likes.

:class:`StepScheduler` is kiln's engine for every target: each request decodes on its own
:class:`~kiln.decoding.DecodeSession` (the KV cache of one sequence, as ``kiln generate`` does),
and one worker thread takes the active sequences in turn, one step each (the prompt's prefill is
one step, chunked by the graph's sequence range), so a long generation never holds the others up
by more than one step of each. At most ``max_active`` sequences hold a cache; up to ``max_queue``
more wait, in arrival order, and a request past that is refused (:class:`QueueFull`, a 429). A
cancelled request (its client went away) leaves at its next turn, or from the queue at once.

A runtime that batches requests itself plugs in as another :class:`Engine`, chosen in
:func:`kiln.serve.llm.open_engine`: OpenVINO GenAI's ``ContinuousBatchingPipeline`` on an
OpenVINO GenAI folder is :class:`kiln.serve.genai_engine.GenaiEngine` (the same requests:
``add_request`` with the ids, ``max_new_tokens`` and the sampling; the same :class:`TextTracker`
for the text and the stop strings). ONNX Runtime GenAI's batched generator could be another.
"""

from __future__ import annotations

import abc
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kiln.decoding import DecodeSession, Sampling, Tokenizer, pick

log = logging.getLogger("kiln.serve")

# Why a generation ended, as OpenAI's finish_reason says it ("cancelled" and "error" never reach
# a client: its connection is gone, or it gets an error instead).
STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"


class QueueFull(Exception):
    """Every active slot and every queue place is taken: the request is refused (429)."""


class Closed(Exception):
    """The engine is shutting down and takes no new requests (503)."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()  # text that ends the generation, never returned
    ignore_eos: bool = False  # go on past the tokenizer's EOS (fixed output lengths, as vLLM's)


@dataclass(frozen=True)
class Event:
    """The text new since the last event, the tokens generated so far, and why it ended (None
    while it goes on)."""

    text: str
    tokens: int
    finish: str | None = None
    error: str | None = None
    first: bool = False  # the event of the first token (time to first token)


Listener = Callable[[Event], None]


class Observer(Protocol):
    """What an engine reports (the server's metrics)."""

    def queued(self, depth: int) -> None: ...

    def active(self, count: int) -> None: ...

    def finished(self, reason: str, prompt_tokens: int, tokens: int) -> None: ...


class Handle(Protocol):
    def cancel(self) -> None: ...


class Engine(Protocol):
    """A causal LM's requests, run concurrently (see the module)."""

    def submit(self, request: GenerationRequest, on_event: Listener) -> Handle:
        """Start ``request`` (or queue it); ``on_event`` is called from the engine's thread.
        Raises :class:`QueueFull` or :class:`Closed`."""
        ...

    def state(self) -> dict[str, int]:
        """``{"active", "queued", ...}``: sequences decoding and waiting now."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, let the admitted ones finish (``timeout``: then cancel what is
        left), and stop."""
        ...


class TextTracker:
    """A generation's text as its tokens come: the whole sequence decoded each time (so a character
    split across tokens stays whole, as :func:`kiln.decoding.stream_text`), stop strings found
    across token boundaries and cut off, and the tail that could still become a stop string held
    back until it cannot."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.shown = 0  # characters of the text already given out

    def add(self, token: int) -> tuple[str, bool]:
        """The text to give out now, and whether a stop string ended the generation."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return "", False
        start = max(0, self.shown - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        if hits:
            cut = min(hits)
            return self._give(text[: max(cut, self.shown)]), True
        return self._give(text[: len(text) - self._held(text)]), False

    def flush(self) -> str:
        """What is left once the generation ends without a stop string."""
        return self._give(self.tokenizer.decode(self.ids)) if self.ids else ""

    def _held(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a stop string."""
        for n in range(min(max((len(s) for s in self.stop), default=1) - 1, len(text) - self.shown), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stop):
                return n
        return 0

    def _give(self, text: str) -> str:
        new = text[self.shown :]
        self.shown = max(self.shown, len(text))
        return new


@dataclass(frozen=True)
class EngineSettings:
    """How an engine runs: sequences decoding at once, requests waiting beyond them, the runtime's
    threads (None: its default), and which engine (``auto``: the runtime's own batching where the
    artifact has it, else kiln's; :func:`kiln.serve.llm.engine_for`)."""

    max_active: int = 8
    max_queue: int = 256
    threads: int | None = None
    engine: str = "auto"


@dataclass(eq=False)  # each request is itself: compared by identity
class Queued:
    """One request in an engine: what every engine keeps of it."""

    request: GenerationRequest
    on_event: Listener
    text: TextTracker
    engine: QueuedEngine
    tokens: int = 0
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        """Queued: it leaves now; decoding: the worker ends it before its next step."""
        self.cancelled = True
        self.engine._dequeue(self)


class QueuedEngine(abc.ABC):
    """What both engines share: the bounded queue and its admission, the worker thread's turn,
    the token rule (EOS, stop strings, ``max_tokens``), the ending of a request, the metrics and
    the drain. A subclass sets its own state, then calls ``__init__`` (it starts the worker), and
    gives :meth:`_new`, :meth:`_run` (one turn over the active requests) and :meth:`_release`."""

    def __init__(
        self, tokenizer: Tokenizer, max_active: int, max_queue: int, observer: Observer | None, name: str
    ) -> None:
        self.tokenizer = tokenizer
        self.max_active, self.max_queue = max_active, max_queue
        self.observer = observer
        self.eos = frozenset(tokenizer.eos_ids)
        self._waiting: collections.deque[Queued] = collections.deque()
        self._active: list[Queued] = []
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # Engine

    def submit(self, request: GenerationRequest, on_event: Listener) -> Queued:
        seq = self._new(request, on_event)
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
        """Requests decoding, waiting, and decoding but cancelled (they leave before their next step)."""
        with self._cond:
            cancelled = sum(s.cancelled and not s.done for s in self._active)
            return {"active": len(self._active), "queued": len(self._waiting), "cancelled": cancelled}

    def close(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closing = True
            if timeout is not None and self._deadline is None:
                self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join()
        self._closed()

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
                    admitted.append(self._waiting.popleft())
                self._active.extend(admitted)
                turn = list(self._active)
                self._report()
            self._run(admitted, turn)
            with self._cond:
                self._active = [s for s in self._active if not s.done]
                idle = not self._active
                self._report()
            if idle:
                self._idle()

    def _token(self, seq: Queued, token: int) -> bool:
        """One new token of ``seq``: its text to the client, or its end; True when it ended."""
        seq.tokens += 1
        if token in self.eos and not seq.request.ignore_eos:  # the EOS is counted, never shown
            self._finish(seq, STOP, seq.text.flush())
            return True
        text, stopped = seq.text.add(token)
        if stopped:
            self._finish(seq, STOP, text)
        elif seq.tokens >= seq.request.max_tokens:
            self._finish(seq, LENGTH, text + seq.text.flush())
        else:
            seq.on_event(Event(text, seq.tokens, first=seq.tokens == 1))
            return False
        return True

    def _failed(self, seq: Queued, err: Exception, what: str = "failed on") -> None:
        message = " ".join(str(err).split())[:2000]
        self._finish(seq, ERROR, error=f"the runtime {what} this request: {type(err).__name__}: {message}")

    def _finish(self, seq: Queued, reason: str, text: str = "", error: str | None = None) -> None:
        if seq.done:
            return
        self._release(seq, reason)
        seq.done = True
        if self.observer is not None:
            self.observer.finished(reason, len(seq.request.prompt), seq.tokens)
        seq.on_event(Event(text, seq.tokens, reason, error, first=seq.tokens == 1))

    def _dequeue(self, seq: Queued) -> None:
        with self._cond:
            if seq not in self._waiting:
                self._cond.notify()  # a worker waiting for work still takes a turn to end it
                return
            self._waiting.remove(seq)
            self._report()
        self._finish(seq, CANCELLED)

    def _report(self) -> None:
        if self.observer is not None:
            self.observer.queued(len(self._waiting))
            self.observer.active(len(self._active))

    # What each engine gives

    @abc.abstractmethod
    def _new(self, request: GenerationRequest, on_event: Listener) -> Queued:
        """The engine's record of a new request."""

    @abc.abstractmethod
    def _run(self, admitted: list[Any], turn: list[Any]) -> None:
        """One turn: ``admitted`` just left the queue; ``turn`` is every active request."""

    def _release(self, seq: Any, reason: str) -> None:
        """What the runtime holds for ``seq``, given back as it ends."""

    def _idle(self) -> None:
        """After a turn that left no request active."""

    def _closed(self) -> None:
        """After the worker has drained and stopped."""


@dataclass(eq=False)
class Sequence_(Queued):
    """One request in kiln's scheduler: its own decode session, and the token fed next."""

    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    session: DecodeSession | None = None
    last: int | None = None  # the last token picked, fed at the next turn


class StepScheduler(QueuedEngine):
    """kiln's engine: a fair round-robin of one-step turns over per-request decode sessions, on one
    worker thread (see the module)."""

    def __init__(
        self,
        new_session: Callable[[], DecodeSession],
        tokenizer: Tokenizer,
        max_active: int,
        max_queue: int,
        observer: Observer | None = None,
        name: str = "kiln-generate",
    ) -> None:
        self.new_session = new_session
        self._idle_sessions: list[DecodeSession] = []  # kept for the next requests (reset on reuse)
        super().__init__(tokenizer, max_active, max_queue, observer, name)

    def _new(self, request: GenerationRequest, on_event: Listener) -> Sequence_:
        text = TextTracker(self.tokenizer, request.stop)
        return Sequence_(request, on_event, text, self, rng=_rng(request.sampling.seed))

    def _run(self, admitted: list[Sequence_], turn: list[Sequence_]) -> None:
        for seq in turn:  # one step each, in turn
            self._step(seq)

    def _step(self, seq: Sequence_) -> None:
        if seq.cancelled:
            self._finish(seq, CANCELLED)
            return
        try:
            if seq.session is None:  # its first turn: the prompt's prefill
                seq.session = self._idle_sessions.pop() if self._idle_sessions else self.new_session()
                seq.session.reset()
                logits = seq.session.feed(list(seq.request.prompt))[-1]
            else:
                assert seq.last is not None
                logits = seq.session.feed([seq.last])[-1]
            token = pick(logits, seq.request.sampling, seq.rng)
        except Exception as err:  # the runtime's failure ends this request only
            log.exception("kiln serve: a generation failed")
            self._failed(seq, err)
            return
        seq.last = token
        self._token(seq, token)

    def _release(self, seq: Sequence_, reason: str) -> None:
        if seq.session is not None:
            if reason == ERROR:  # a session the runtime failed in is not reused
                seq.session.close()
            else:
                seq.session.reset()  # its cache released until the next request takes it
                self._idle_sessions.append(seq.session)
            seq.session = None

    def _closed(self) -> None:
        for session in self._idle_sessions:
            session.close()
        self._idle_sessions.clear()


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)
