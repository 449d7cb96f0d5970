"""kiln serve's app at the ASGI level, without a socket: every response counted in /metrics, a bug
is a JSON 500 with one logged traceback, a client gone mid-upload is a 499 with no traceback, a
head over the limit is 414/431 in the protocol's shape."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from kiln.serve.protocol import Limits, ModelIO
from tests.ship.test_serve_fuzz import SIG

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'kiln[serve]' -c constraints.txt")
from kiln.serve.app import Health, create_app
from kiln.serve.metrics import ServerMetrics

MODEL = SimpleNamespace(
    name="fuzz",
    io=ModelIO("fuzz", SIG, SIG.outputs),
    platform="eager",
    manifest=SimpleNamespace(target="eager", precision="fp32"),
    close=lambda: None,
)
BODY = json.dumps(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
            {"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]},
        ]
    }
).encode()


class BuggyBatcher:
    def submit(self, inputs: Any) -> Any:
        raise TypeError("a bug outside the runtime")

    def close(self, timeout: float | None = None) -> None:
        pass


def call(app: Any, method: str, path: str, body: bytes | None = b"", headers: list[tuple[bytes, bytes]] = ()) -> Any:
    """(status, JSON body) of one request; ``body`` None: the client leaves before sending it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"k"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    incoming = [] if body is None else [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def app_and_metrics() -> tuple[Any, ServerMetrics]:
    metrics = ServerMetrics(MODEL)  # type: ignore[arg-type]
    app = create_app(MODEL, BuggyBatcher(), metrics, Limits(max_head=2048), Health(ready=True))  # type: ignore[arg-type]
    return app, metrics


def count(metrics: ServerMetrics, endpoint: str, status: int) -> float:
    return metrics.registry.get_sample_value("kiln_requests_total", {"endpoint": endpoint, "status": str(status)}) or 0


def test_a_bug_is_a_json_500_counted_with_one_traceback(
    app_and_metrics: tuple[Any, ServerMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    app, metrics = app_and_metrics
    with caplog.at_level(logging.ERROR):
        status, body = call(app, "POST", "/v2/models/fuzz/infer", BODY)
    assert status == 500 and "TypeError" in body["error"], body
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert count(metrics, "infer", 500) == 1


def test_a_client_gone_mid_upload_is_a_499_with_no_traceback(
    app_and_metrics: tuple[Any, ServerMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    app, metrics = app_and_metrics
    with caplog.at_level(logging.DEBUG):
        call(app, "POST", "/v2/models/fuzz/infer", None, [(b"content-length", b"100")])
    assert count(metrics, "infer", 499) == 1
    ours = [r for r in caplog.records if r.name.startswith(("kiln", "uvicorn", "starlette"))]
    assert len(ours) == 1 and ours[0].exc_info is None and "went away" in ours[0].getMessage()


def test_every_response_is_counted_by_route(app_and_metrics: tuple[Any, ServerMetrics]) -> None:
    app, metrics = app_and_metrics
    assert call(app, "GET", "/v2/health/ready") == (200, {"ready": True})
    assert call(app, "GET", "/nowhere")[0] == 404
    assert call(app, "DELETE", "/v2/models/fuzz/infer")[0] == 405
    assert call(app, "POST", "/v2/models/fuzz/infer", b"[" * 5000)[0] == 400
    keys = [("health_ready", 200), ("other", 404), ("infer", 405), ("infer", 400)]
    assert [count(metrics, *key) for key in keys] == [1, 1, 1, 1]


def test_a_head_over_the_limit_is_414_or_431_in_the_protocols_shape(app_and_metrics: tuple[Any, ServerMetrics]) -> None:
    app, metrics = app_and_metrics
    status, body = call(app, "GET", "/v2/" + "u" * 3000)
    assert status == 414 and "--max-header-kb" in body["error"]
    status, body = call(app, "GET", "/v2", headers=[(b"x-pad", b"v" * 3000)])
    assert status == 431 and "headers" in body["error"]
    assert count(metrics, "http", 414) == 1 and count(metrics, "http", 431) == 1


def test_not_ready_until_the_server_says_so() -> None:
    health = Health()
    app = create_app(MODEL, BuggyBatcher(), ServerMetrics(MODEL), Limits(), health)  # type: ignore[arg-type]
    assert call(app, "GET", "/v2/health/ready") == (503, {"ready": False})
    health.ready = True
    assert call(app, "GET", "/v2/health/ready") == (200, {"ready": True})
