"""The REST routes of the Open Inference Protocol (KServe v2), on Starlette.

``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata), ``/v2/models/<name>``
(model metadata) and ``/v2/models/<name>/ready``, ``POST /v2/models/<name>/infer``; each model
route also under ``/versions/<v>/``. ``GET /metrics`` is Prometheus' text format. Every error is
``{"error": message}`` with its status, as the protocol defines and ``tritonclient`` reads.

The body is read with a cap (413 from ``Content-Length`` before reading, or while reading a
chunked body, and on the decompressed size of a gzip/deflate body), decoded and checked on the
event loop, and run on the batcher's worker thread, so the loop keeps accepting while a batch
runs. A runtime failure is a 500 for its request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.serve.batcher import Batcher
from kiln.serve.metrics import ServerMetrics
from kiln.serve.model import VERSION, ServedModel
from kiln.serve.protocol import HEADER_LENGTH, RequestError, encode_response, parse_request, validate

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

EXTENSIONS = ["binary_tensor_data"]


@dataclass(frozen=True)
class Limits:
    max_body: int  # bytes, after decompression


def create_app(model: ServedModel, batcher: Batcher, metrics: ServerMetrics, limits: Limits) -> Starlette:
    """The app; its lifespan's shutdown drains the batcher and closes the runner."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    state = {"ready": True}

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    def endpoint(name: str, fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            start = time.monotonic()
            try:
                response = await fn(request)
            except RequestError as err:
                response = error(err.status, str(err))
            metrics.request(name, response.status_code, time.monotonic() - start)
            return response

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
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "kiln", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request) -> Response:
        served(request)
        return JSONResponse(model.metadata())

    async def model_ready(request: Request) -> Response:
        served(request)
        return JSONResponse({"name": model.name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def infer(request: Request) -> Response:
        served(request)
        body = await read_body(request, limits.max_body)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
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
        return error(status, f"{what}: {request.method} {request.url.path}; the v2 routes are under /v2")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state["ready"] = False
        await asyncio.to_thread(batcher.close)
        model.close()

    routes = [
        Route("/v2/health/live", endpoint("health_live", live)),
        Route("/v2", endpoint("server", server_metadata)),
    ]
    routes.append(Route("/v2/health/ready", endpoint("health_ready", ready)))
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes.append(Route(base, endpoint("model_metadata", model_metadata)))
        routes.append(Route(base + "/ready", endpoint("model_ready", model_ready)))
        routes.append(Route(base + "/infer", endpoint("infer", infer), methods=["POST"]))
    routes.append(Route("/metrics", endpoint("metrics", prometheus)))
    handlers: dict[Any, Any] = {404: not_found, 405: not_found}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


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
