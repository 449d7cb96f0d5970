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

import itertools
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.decoding import Sampling, Tokenizer
from kiln.serve.engine import (
    CANCELLED,
    LENGTH,
    EngineSettings,
    GenerationRequest,
    Listener,
    Observer,
    Queued,
    QueuedEngine,
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


@dataclass(eq=False)
class GenaiSequence(Queued):
    """One request in the engine; ``handle`` is the pipeline's once it is added."""

    handle: Any = None


class GenaiEngine(QueuedEngine):
    """Requests on one ``ContinuousBatchingPipeline``, stepped by one worker thread (see the module)."""

    name = NAME

    def __init__(
        self,
        folder: Path,
        tokenizer: Tokenizer,
        context: int,
        settings: EngineSettings,
        observer: Observer | None = None,
        thread_name: str = "kiln-genai",
    ) -> None:
        import openvino as ov
        import openvino_genai as og

        self.og, self.ov = og, ov
        properties: dict[str, Any] = dict(F32)
        if settings.threads is not None:
            properties["INFERENCE_NUM_THREADS"] = settings.threads
        self.pipe = og.ContinuousBatchingPipeline(
            str(folder), scheduler_config(og, context, settings.max_active), "CPU", properties
        )
        self._ids = itertools.count()
        super().__init__(tokenizer, settings.max_active, settings.max_queue, observer, thread_name)

    def _new(self, request: GenerationRequest, on_event: Listener) -> GenaiSequence:
        return GenaiSequence(request, on_event, TextTracker(self.tokenizer, request.stop), self)

    # The worker

    def _run(self, admitted: list[GenaiSequence], turn: list[GenaiSequence]) -> None:
        for seq in admitted:
            self._add(seq)
        for seq in turn:
            if seq.cancelled and not seq.done:
                self._finish(seq, CANCELLED)
        if all(s.done for s in turn):
            return
        try:
            self.pipe.step()
        except Exception as err:  # the runtime failed: every request in this step ends with it
            log.exception("kiln serve: a continuous-batching step failed")
            for seq in turn:
                self._failed(seq, err)
        for seq in turn:
            if not seq.done:
                self._read(seq)

    def _idle(self) -> None:
        if self.pipe.has_non_finished_requests():
            self.pipe.step()  # drops the requests cancelled above, freeing their blocks

    def _add(self, seq: GenaiSequence) -> None:
        ids = self.ov.Tensor(np.asarray([seq.request.prompt], dtype=np.int64))
        try:
            seq.handle = self.pipe.add_request(next(self._ids), ids, generation_config(self.og, seq.request))
        except Exception as err:
            self._failed(seq, err, "refused")

    def _read(self, seq: GenaiSequence) -> None:
        handle = seq.handle
        new: list[int] = []
        while handle.can_read():
            for out in handle.read().values():
                new.extend(int(t) for t in out.generated_ids)
        for token in new:
            if self._token(seq, token):
                return
        if self._ended(handle):  # the pipeline ended it without a token that ends it here
            self._finish(seq, LENGTH, seq.text.flush())

    def _ended(self, handle: Any) -> bool:
        status = handle.get_status()
        return status != self.og.GenerationStatus.RUNNING and not handle.can_read()

    def _release(self, seq: GenaiSequence, reason: str) -> None:
        if seq.handle is not None and seq.handle.get_status() == self.og.GenerationStatus.RUNNING:
            seq.handle.cancel()  # its blocks are freed at the pipeline's next step


def is_genai_folder(folder: Path) -> bool:
    """An OpenVINO GenAI model folder: the IR under its own name and the tokenizer IRs."""
    from kiln.targets.openvino.genai import DETOKENIZER, MAIN, TOKENIZER

    return all((folder / name).is_file() for name in (MAIN, TOKENIZER, DETOKENIZER))
