"""``kiln serve`` answers in its protocol, always, on the wire: a real server (the sentinel eager
artifact of test_serve.py) fed what the decoder's property tests cannot send: a body nested
100,000 deep, a JSON part over its limit, a 1 MiB URL, 64 KiB of headers, a client that leaves
mid-upload, outputs JSON cannot carry; and its startup line, printed only once the port accepts.
Every refusal is ``{"error": ...}`` and counted in /metrics."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ship.test_serve import LISTENING, ROOT, START_SECONDS, Server, http_client, sentinel

__all__ = ["sentinel"]  # the fixture, shared with test_serve.py

pytestmark = pytest.mark.slow  # builds the sentinel model, then serves it
INFER = "/v2/models/sentinel/infer"


def start_and_connect_at_once(artifact: Path, log: Path, *flags: str) -> tuple[Server, dict[str, Any]]:
    """Start a server and, the moment its startup line shows, ask /v2/health/ready once, with no
    retry: what a client that trusts the line sees."""
    cmd = [sys.executable, "-m", "kiln.cli", "serve", str(artifact), "--port", "0", *flags]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            server = Server(proc, int(match.group(1)), match.group(2), log)
            try:
                status, body, _ = request(server, "GET", "/v2/health/ready")
                return server, {"status": status, "body": body}
            except OSError as err:
                return server, {"error": repr(err)}
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"kiln serve did not start within {START_SECONDS} s: {log.read_text()}")


def request(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, Any, float]:
    """Status, JSON body and seconds of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), time.perf_counter() - start
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(sentinel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    log = tmp_path_factory.mktemp("limits") / "stderr.txt"
    server, first = start_and_connect_at_once(sentinel, log, "--max-json-mb", "0.5")
    yield server, first
    assert server.stop() == 0, server.stderr()
    assert "Traceback" not in server.stderr()


def counted(server: Server, endpoint: str, status: int) -> float:
    return server.metrics().get(f"kiln_requests_total{{endpoint={endpoint},status={status}}}", 0.0)


def test_the_startup_line_comes_once_the_port_accepts_and_is_ready(served: tuple[Server, dict[str, Any]]) -> None:
    _, first = served
    assert first == {"status": 200, "body": {"ready": True}}


def test_a_body_100k_deep_is_a_400_error_counted_in_metrics(served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = served
    before = counted(server, "infer", 400)
    status, body, seconds = request(server, "POST", INFER, b'{"inputs": ' + b"[" * 100_000)
    assert status == 400 and "nests 100001 deep" in body["error"], body
    assert counted(server, "infer", 400) == before + 1
    assert seconds < 5, f"took {seconds:.3f} s to refuse"


def test_a_json_part_over_its_limit_is_413(served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = served
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}], "id": "x" * 600_000}
    status, body, _ = request(server, "POST", INFER, json.dumps(doc).encode())
    assert status == 413 and "--max-json-mb" in body["error"], body


def test_a_long_url_is_414_and_long_headers_431_in_the_protocols_shape(served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = served
    status, body, _ = request(server, "GET", "/v2/models/" + "m" * 2**20)
    assert status == 414 and "--max-header-kb" in body["error"], body
    status, body, _ = request(server, "GET", "/v2/models/" + "m" * 17_000)  # read whole by h11, refused by kiln
    assert status == 414, body
    headers = {f"x-pad-{i}": "v" * 1024 for i in range(64)}
    status, body, _ = request(server, "GET", "/v2", **headers)
    assert status == 431 and "headers" in body["error"], body
    assert counted(server, "http", 414) == 2 and counted(server, "http", 431) == 1
    status, _, _ = request(server, "GET", "/nowhere")
    assert status == 404 and counted(server, "other", 404) >= 1


def test_a_client_gone_mid_upload_is_counted_with_no_traceback(served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = served
    before = counted(server, "infer", 499)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: k\r\nContent-Length: 100000\r\n\r\n".encode() + b"[" * 1000)
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while counted(server, "infer", 499) == before:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert "Traceback" not in server.stderr() and "ClientDisconnect" not in server.stderr()


def test_non_finite_outputs_come_in_binary_or_as_a_422_naming_it(served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = served
    x = np.array([[np.inf, 1, 2, 3]], np.float32)  # the Linear turns it into +-inf outputs
    tensor = http_client.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    out = server.client().infer("sentinel", [tensor]).as_numpy("output")
    assert not np.isfinite(out).any()
    with pytest.raises(http_client.InferenceServerException, match="NaN or infinity, which JSON cannot") as err:
        wanted = [http_client.InferRequestedOutput("output", binary_data=False)]
        server.client().infer("sentinel", [tensor], outputs=wanted)
    assert err.value.status() == "422"
