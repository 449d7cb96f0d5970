"""``kiln serve`` for causal LMs: the OpenAI-compatible API on Starlette, over one engine per model.

``GET /v1/models`` (and ``/v1/models/<id>``), ``POST /v1/completions``, ``POST
/v1/chat/completions`` (the messages rendered by the artifact's chat template), with ``stream:
true`` as server-sent events (``data: {...}`` chunks, then ``data: [DONE]``); ``GET /health``,
``/v2/health/live``, ``/v2/health/ready`` and ``/metrics``. The request's ``model`` picks one of
the artifacts served (its id: the folder's name, or ``--name``). Requests and answers are shaped
in :mod:`kiln.serve.openai_api`; each runs on its model's :class:`~kiln.serve.engine.Engine`.

Errors are OpenAI's shape with their status: 400 for a bad request (not JSON, a wrong type, a
prompt and ``max_tokens`` that do not fit the context, in :func:`kiln.decoding.context_misfit`'s
words), 404 for a model not served here, 413 for a body over ``--max-body-mb``, 429 when every
sequence slot and queue place is taken, 503 while shutting down. A client that goes away (a
stream it stops reading and closes, or a request it abandons) cancels its sequence at once: its
cache is released at the sequence's next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.decoding import Sampling, Tokenizer, context_misfit, generate, session_for
from kiln.errors import ConfigError, MissingDependencyError, TargetBuildError
from kiln.manifest import Manifest
from kiln.serve.engine import Closed, Engine, EngineSettings, Event, GenerationRequest, QueueFull, StepScheduler
from kiln.serve.metrics import EngineObserver, GenerationMetrics
from kiln.serve.openai_api import (
    COMPLETION_DEFAULT_TOKENS,
    DONE,
    ApiError,
    Asked,
    chunk,
    error_body,
    parse,
    request_id,
    response,
    sse,
    usage_chunk,
)
from kiln.serve.protocol import Limits, RequestError
from kiln.targets.base import Runner, RunOptions

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("kiln.serve")
CLIENT_GONE = 499


@dataclass
class GenerativeModel:
    """One causal LM's artifact being served: its runner, tokenizer and engine."""

    name: str
    folder: Path
    manifest: Manifest
    runner: Runner | None  # None where the engine runs the artifact itself (openvino-genai)
    tokenizer: Tokenizer
    engine: Engine
    created: int
    engine_name: str = "kiln"

    @property
    def context(self) -> int:
        return self.manifest.signature.context_length()

    def card(self) -> dict[str, Any]:
        """The model as ``GET /v1/models`` lists it."""
        m = self.manifest
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "kiln",
            "root": m.model,
            "target": m.target,
            "precision": m.precision,
            "max_model_len": self.context,
            "engine": self.engine_name,
        }

    def close(self, timeout: float | None = None) -> None:
        self.engine.close(timeout)
        if self.runner is not None:
            self.runner.close()


ENGINES = ("auto", "kiln", "openvino-genai")


def engine_for(folder: Path, manifest: Manifest, wanted: str = "auto") -> str:
    """Which engine serves an artifact: ``openvino-genai`` (the runtime's continuous batching) for
    an OpenVINO artifact that is an OpenVINO GenAI folder built with a batch dim over 1 (at
    ``dims.batch.max = 1`` the IR's key/value widening holds a constant batch and the CPU plugin's
    ``PagedAttentionExtension`` fails on it) where ``openvino_genai`` is installed, ``kiln``
    (:class:`StepScheduler`) otherwise; ``wanted`` other than auto is kept, or one line
    where the artifact cannot take it."""
    import importlib.util

    from kiln.serve.genai_engine import NAME, is_genai_folder

    if wanted not in ENGINES:
        raise ConfigError(f"unknown engine {wanted!r}; expected one of {', '.join(ENGINES)}")
    if wanted == "kiln":
        return "kiln"
    fits = is_genai_folder(folder)  # only OpenVINO writes its IR under that name beside tokenizer IRs
    batch = manifest.signature.dims.get("batch")
    batched = batch is None or batch.max > 1  # a batch of 1 is baked into the IR's widening: paged attention fails
    installed = importlib.util.find_spec("openvino_genai") is not None
    if wanted == NAME:
        if not fits:
            raise ConfigError(
                f"{folder} ({manifest.target}:{manifest.precision}) is not an OpenVINO GenAI folder (openvino_model.xml "
                "with openvino_tokenizer.xml and openvino_detokenizer.xml); serve it with --engine kiln, or rebuild "
                "its openvino target with kiln build"
            )
        if not batched:
            raise ConfigError(
                f"{folder} was built with dims.batch.max = 1, which OpenVINO GenAI's paged attention cannot run; "
                "rebuild it with a larger dims.batch.max (8), or serve it with --engine kiln"
            )
        if not installed:
            raise MissingDependencyError(
                "--engine openvino-genai needs openvino-genai: pip install 'kiln[openvino]' -c constraints.txt"
            )
        return NAME
    return NAME if fits and batched and installed else "kiln"


def open_engine(
    runner: Runner | None,
    manifest: Manifest,
    tokenizer: Tokenizer,
    settings: EngineSettings,
    observer: EngineObserver,
    folder: Path | None = None,
) -> Engine:
    """The engine named by :func:`engine_for`: kiln's :class:`StepScheduler` over the artifact's
    runner, or :class:`~kiln.serve.genai_engine.GenaiEngine` over OpenVINO GenAI's
    ``ContinuousBatchingPipeline`` on the folder (no kiln runner). An ONNX Runtime folder with a
    ``genai_config.json`` could get one over ``onnxruntime_genai``'s batched generator here."""
    sig = manifest.signature
    if settings.engine == "openvino-genai":
        from kiln.serve.genai_engine import GenaiEngine

        assert folder is not None
        return GenaiEngine(folder, tokenizer, sig.context_length(), settings, observer, f"kiln-{manifest.key}")
    assert runner is not None
    return StepScheduler(
        lambda: session_for(runner, sig),
        tokenizer,
        settings.max_active,
        settings.max_queue,
        observer,
        name=f"kiln-{manifest.key}",
    )


def load_generative(
    folder: Path, manifest: Manifest, name: str, settings: EngineSettings, observer: EngineObserver
) -> GenerativeModel:
    """Open a causal LM's artifact (exit 5 where its runtime cannot run here), warm it up with a
    two-token generation, and start its engine (:func:`engine_for`)."""
    from kiln.targets.opening import artifact_tokenizer, open_runner

    tokenizer = artifact_tokenizer(folder)
    kind = engine_for(folder, manifest, settings.engine)
    settings = replace(settings, engine=kind)
    if kind != "kiln":
        try:
            started = open_engine(None, manifest, tokenizer, settings, observer, folder)
            warm_up(started, tokenizer)
        except Exception as err:
            raise TargetBuildError(
                f"{manifest.target}:{manifest.precision} failed to start OpenVINO GenAI's continuous batching "
                f"({type(err).__name__}: {err}); rebuild the artifact with kiln build, or serve it with --engine kiln"
            ) from err
        return GenerativeModel(name, folder, manifest, None, tokenizer, started, int(time.time()), kind)
    runner = open_runner(folder, RunOptions(threads=settings.threads), manifest)
    try:
        session = session_for(runner, manifest.signature)
        list(generate(session, tokenizer.encode("hello") or [0], 2))
        session.close()
    except Exception as err:
        runner.close()
        raise TargetBuildError(
            f"{manifest.target}:{manifest.precision} failed a warm-up generation ({type(err).__name__}: {err}); "
            "rebuild the artifact with kiln build"
        ) from err
    started = open_engine(runner, manifest, tokenizer, settings, observer)
    return GenerativeModel(name, folder, manifest, runner, tokenizer, started, int(time.time()), kind)


def warm_up(engine: Engine, tokenizer: Tokenizer) -> None:
    """A two-token generation through ``engine``; raises what it ended with, if an error."""
    done = threading.Event()
    last: list[Event] = []

    def on_event(event: Event) -> None:
        if event.finish is not None:
            last.append(event)
            done.set()

    engine.submit(GenerationRequest(tuple(tokenizer.encode("hello") or [0]), 2), on_event)
    done.wait()
    if last[0].error is not None:
        engine.close()
        raise RuntimeError(last[0].error)


def prompt_ids(model: GenerativeModel, asked: Asked) -> tuple[tuple[int, ...], int]:
    """The prompt's ids and the new tokens to ask for, once they fit the model's context."""
    param = "messages" if asked.chat else "prompt"
    if asked.chat:
        try:
            ids = model.tokenizer.encode_chat(asked.messages)
        except ConfigError as err:
            raise ApiError(str(err), param="messages") from err
    elif asked.prompt_ids is not None:
        vocab = model.manifest.signature.cache.vocab_size if model.manifest.signature.cache else None
        if vocab is not None and any(not 0 <= t < vocab for t in asked.prompt_ids):
            raise ApiError(f"'prompt' holds token ids outside the vocabulary [0, {vocab})", param="prompt")
        ids = list(asked.prompt_ids)
    else:
        ids = model.tokenizer.encode(asked.prompt or "")
    if not ids:
        raise ApiError("the prompt encodes to no tokens; give some text", param=param)
    if asked.max_tokens is not None:
        new = asked.max_tokens
    elif asked.chat:
        new = max(model.context - len(ids) + 1, 1)  # whatever the context has room for
    else:
        new = COMPLETION_DEFAULT_TOKENS
    misfit = context_misfit(len(ids), new, model.context)
    if misfit is not None:
        raise ApiError(misfit, param="max_tokens" if asked.max_tokens is not None else param)
    return tuple(ids), new


class ClientGone(Exception):
    """The client closed its connection before the answer."""


class Running:
    """One request in its engine, seen from the event loop: its events, and its client watched for
    a disconnect (which cancels the sequence)."""

    def __init__(self, engine: Engine, request: GenerationRequest, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.handle = engine.submit(request, lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event))
        self.gone = asyncio.ensure_future(_disconnect(receive))
        self.finished = False

    async def events(self) -> AsyncIterator[Event]:
        try:
            while not self.finished:
                get = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    raise ClientGone
                event = get.result()
                self.finished = event.finish is not None
                yield event
        finally:
            self.close()

    def close(self) -> None:
        if not self.finished:
            self.handle.cancel()
        self.gone.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream:
    """A ``text/event-stream`` response fed by an async iterator of events, which it closes (so the
    sequence is cancelled) whether the stream ends, fails or the client goes."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for piece in self.chunks:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (ClientGone, OSError):
            log.info("kiln serve: a client closed its stream before the end; its sequence is cancelled")
        finally:
            await self.chunks.aclose()  # type: ignore[attr-defined]


def create_openai_app(
    models: dict[str, GenerativeModel], metrics: GenerationMetrics, limits: Limits, health: Any, graceful: float
) -> ASGIApp:
    """The app; its lifespan's shutdown drains every engine and closes the runners."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from kiln.serve.app import Counted, read_body

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> Response:
        return JSONResponse(error_body(status, message, param, code), status_code=status)

    def endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as err:
                return JSONResponse(err.body(), status_code=err.status)
            except RequestError as err:  # the body's size and encoding, as the v2 routes check them
                return error(err.status, str(err))
            except (ClientDisconnect, ClientGone):
                log.info("kiln serve: %s %s: the client went away mid-request", request.method, request.url.path)
                return error(CLIENT_GONE, "the client closed the connection before the answer")

        return handler

    def model_of(name: str) -> GenerativeModel:
        found = models.get(name)
        if found is None:
            served = ", ".join(repr(n) for n in models)
            raise ApiError(f"the model {name!r} is not served here; this server serves {served}", 404, "model")
        return found

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [m.card() for m in models.values()]})

    async def one_model(request: Request) -> Response:
        return JSONResponse(model_of(request.path_params["model"]).card())

    async def health_live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def health_ready(request: Request) -> Response:
        return JSONResponse({"ready": health.ready}, status_code=200 if health.ready else 503)

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def completions(request: Request) -> Any:
        return await _generation(request, chat=False)

    async def chat_completions(request: Request) -> Any:
        return await _generation(request, chat=True)

    async def _generation(request: Request, chat: bool) -> Any:
        received = time.monotonic()
        body = await read_body(request, limits.max_body)
        asked = parse(body, chat)
        model = model_of(asked.model)
        ids, new = prompt_ids(model, asked)
        sampling = Sampling(temperature=asked.temperature, seed=asked.seed, top_p=asked.top_p)
        wanted = GenerationRequest(ids, new, sampling, asked.stop, asked.ignore_eos)
        try:
            running = Running(model.engine, wanted, request.receive)
        except QueueFull as err:
            return error(429, str(err))
        except Closed as err:
            return error(503, str(err))
        timed = _timed(running.events(), received, model.name)
        rid, created = request_id(chat), int(time.time())
        if asked.stream:
            return EventStream(_chunks(timed, rid, created, asked, len(ids)))
        texts, last = [], None
        async for event in timed:
            texts.append(event.text)
            last = event
        assert last is not None and last.finish is not None
        if last.error is not None:
            return error(500, last.error)
        return JSONResponse(response(rid, created, asked, "".join(texts), last.finish, (len(ids), last.tokens)))

    async def _timed(events: AsyncIterator[Event], received: float, name: str) -> AsyncIterator[Event]:
        """The events, with time to the first token and between tokens observed."""
        last, tokens = received, 0
        try:
            async for event in events:
                if event.tokens > tokens:
                    now = time.monotonic()
                    (metrics.ttft if tokens == 0 else metrics.itl).labels(name).observe(now - last)
                    last, tokens = now, event.tokens
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def _chunks(
        events: AsyncIterator[Event], rid: str, created: int, asked: Asked, prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        try:
            if asked.chat:
                yield sse(chunk(rid, created, asked, None, None, role=True))
            async for event in events:
                if event.error is not None:  # the stream has begun: the error goes in it, as vLLM's
                    yield sse(error_body(500, event.error))
                    break
                if event.text or event.finish:
                    yield sse(chunk(rid, created, asked, event.text, event.finish))
                if event.finish and asked.include_usage:
                    yield sse(usage_chunk(rid, created, asked, prompt_tokens, event.tokens))
            yield DONE
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        what = "no such route" if status == 404 else "method not allowed"
        return error(status, f"{what}: {request.method} {request.url.path[:200]}; the OpenAI routes are under /v1")

    async def internal_error(request: Request, exc: Exception) -> Response:  # a bug: Counted logs it
        return error(500, f"kiln serve failed on this request: {type(exc).__name__}; the server log has the traceback")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        health.ready = False
        for model in models.values():
            await asyncio.to_thread(model.close, graceful)

    def route(path: str, name: str, fn: Callable[[Request], Awaitable[Any]], **kw: Any) -> Route:
        return Route(path, endpoint(fn), name=name, **kw)  # the name labels its metrics

    routes = [
        route("/v1/models", "models", list_models),
        route("/v1/models/{model:path}", "model", one_model),
        route("/v1/completions", "completions", completions, methods=["POST"]),
        route("/v1/chat/completions", "chat_completions", chat_completions, methods=["POST"]),
        route("/health", "health", health_ready),
        route("/v2/health/live", "health_live", health_live),
        route("/v2/health/ready", "health_ready", health_ready),
        route("/metrics", "metrics", prometheus),
    ]
    handlers: dict[Any, Any] = {404: not_found, 405: not_found, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return Counted(app, metrics, limits.max_head, lambda status, message: error_body(status, message))
