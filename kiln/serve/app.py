"""The REST routes of the Open Inference Protocol (KServe v2), on Starlette.

``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata), ``/v2/models/<name>``
(model metadata) and ``/v2/models/<name>/ready``, ``POST /v2/models/<name>/infer``; each model
route also under ``/versions/<v>/``. ``GET /metrics`` is Prometheus' text format. Every error is
``{"error": message}`` with its status, as the protocol defines and ``tritonclient`` reads, and
every response, whatever answered it (a route, the 404 handler, a bug's 500), is counted in
``/metrics`` by an ASGI wrapper around the whole app. A bug in a route is a JSON 500 and one
logged traceback; a client that goes away mid-upload is counted as 499 (nginx's "client closed
request"), with one log line at info level (``--verbose``) and no traceback.

The body is read with a cap (413 from ``Content-Length`` before reading, or while reading a
chunked body, and on the decompressed size of a gzip/deflate body), decoded and checked on the
event loop, and run on the batcher's worker thread, so the loop keeps accepting while a batch
runs. A runtime failure is a 500 for its request only. The limits on a request are
:class:`~kiln.serve.protocol.Limits`; the request head's (414/431) is held by the HTTP layer
(:mod:`kiln.serve.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.serve.batcher import Batcher
from kiln.serve.metrics import HttpMetrics, ServerMetrics
from kiln.serve.model import VERSION, ServedModel
from kiln.serve.protocol import HEADER_LENGTH, Limits, RequestError, encode_response, parse_request, validate

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXTENSIONS = ["binary_tensor_data"]
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer
log = logging.getLogger("kiln.serve")


@dataclass
class Health:
    """Set ready once the listening socket accepts (the server's startup), cleared when shutdown
    begins: ``/v2/health/ready`` says exactly that."""

    ready: bool = False


def create_app(model: ServedModel, batcher: Batcher, metrics: ServerMetrics, limits: Limits, health: Health) -> ASGIApp:
    """The app; its lifespan's shutdown drains the batcher and closes the runner."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    def endpoint(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)
            except RequestError as err:
                return error(err.status, str(err))
            except ClientDisconnect:
                log.info("kiln serve: %s %s: the client went away mid-request", request.method, request.url.path)
                return error(CLIENT_GONE, "the client closed the connection before the request was read")

        return handler

    def served(request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model.name:
            raise RequestError(f"model {name!r} is not served here; this server serves {model.name!r}", 404)
        if version is not None and version != VERSION:
            raise RequestError(f"model {name!r} has no version {version!r}; it has version {VERSION}", 404)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": health.ready}, status_code=200 if health.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "kiln", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request) -> Response:
        served(request)
        return JSONResponse(model.metadata())

    async def model_ready(request: Request) -> Response:
        served(request)
        return JSONResponse({"name": model.name, "ready": health.ready}, status_code=200 if health.ready else 503)

    async def infer(request: Request) -> Response:
        served(request)
        body = await read_body(request, limits.max_body)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH), limits)
        inputs = validate(parsed, model.io)
        future = batcher.submit(inputs)
        try:
            outputs = await asyncio.wrap_future(future)
        except Exception as err:  # the runtime's failure is this request's 500
            message = " ".join(str(err).split())[:2000]
            return error(500, f"{model.platform} failed on this request: {type(err).__name__}: {message}")
        encoded = encode_response(model.io, VERSION, parsed, outputs)
        if encoded.header_length is None:
            return Response(encoded.body, media_type="application/json")
        headers = {HEADER_LENGTH: str(encoded.header_length)}
        return Response(encoded.body, media_type="application/octet-stream", headers=headers)

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        what = "no such route" if status == 404 else "method not allowed"
        return error(status, f"{what}: {request.method} {request.url.path[:200]}; the v2 routes are under /v2")

    async def internal_error(request: Request, exc: Exception) -> Response:  # a bug: Counted logs it
        return error(500, f"kiln serve failed on this request: {type(exc).__name__}; the server log has the traceback")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        health.ready = False
        await asyncio.to_thread(batcher.close)
        model.close()

    def route(path: str, name: str, fn: Callable[[Request], Awaitable[Response]], **kw: Any) -> Route:
        return Route(path, endpoint(fn), name=name, **kw)  # the name labels its metrics

    routes = [
        route("/v2/health/live", "health_live", live),
        route("/v2", "server", server_metadata),
        route("/v2/health/ready", "health_ready", ready),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes.append(route(base, "model_metadata", model_metadata))
        routes.append(route(base + "/ready", "model_ready", model_ready))
        routes.append(route(base + "/infer", "infer", infer, methods=["POST"]))
    routes.append(route("/metrics", "metrics", prometheus))
    handlers: dict[Any, Any] = {404: not_found, 405: not_found, Exception: internal_error}
    return Counted(Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan), metrics, limits.max_head)


class Counted:
    """Counts every HTTP response by its route's name ("other" when no route matched) and status.
    Starlette answers a route's unexpected exception with the app's JSON 500, then re-raises it
    for the server to log; it is logged here (once, with its traceback) and goes no further.

    A request head over ``max_head`` that h11 read whole (it holds only an *incomplete* head to
    the limit, so a head that arrives in one read gets through) is refused here, as
    :mod:`kiln.serve.wire` refuses the rest: 414 for the request line, 431 for the headers."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: HttpMetrics,
        max_head: int,
        shape: Callable[[int, str], dict[str, Any]] = lambda status, message: {"error": message},
    ) -> None:
        self.app, self.metrics, self.max_head, self.shape = app, metrics, max_head, shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), 500
        refused = self.refusal(scope)
        if refused is not None:
            status, message = refused
            body = json.dumps(self.shape(status, message)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self.metrics.request("http", status, time.monotonic() - start)
            return

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("kiln serve: %s %s failed (a bug in kiln serve)", scope["method"], scope["path"][:200])
        finally:
            name = getattr(scope.get("route"), "name", None) or "other"
            self.metrics.request(name, status, time.monotonic() - start)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        from kiln.serve.wire import refusal

        line = len(scope["method"]) + len(scope.get("raw_path", b"")) + len(scope["query_string"]) + 12
        size = line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size <= self.max_head:
            return None
        return refusal(line, size, self.max_head)


async def read_body(request: Request, limit: int) -> bytearray:
    """The body, never more than ``limit`` bytes (413), decompressed when the client sent it
    gzip or deflate (``tritonclient``'s ``request_compression_algorithm``)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(_too_large(f"{int(declared)} bytes long", limit), 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(_too_large("longer than that", limit), 413)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate", 415)
    inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        plain = inflate.decompress(bytes(body), limit + 1)
    except zlib.error as err:
        raise RequestError(f"the {encoding} body does not decompress ({err}); send it whole", 400) from err
    if len(plain) > limit or inflate.unconsumed_tail:
        raise RequestError(_too_large("longer than that once decompressed", limit), 413)
    return bytearray(plain)


def _too_large(size: str, limit: int) -> str:
    return (
        f"the server takes request bodies of at most {limit} bytes and this one is {size}; "
        "send fewer rows per request or start kiln serve with a larger --max-body-mb"
    )
