"""``kiln serve`` as a client sees it: real servers (``python -m kiln.cli serve`` subprocesses on
127.0.0.1, a free port each) answering ``tritonclient.http``, a client nobody here wrote.

Every wait is bounded; the servers run with one runtime thread and the test loads the same
artifact with one thread, so a request that ran alone must give exactly the runner's outputs.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.spec import Arrays

http_client = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the dev extra)")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'kiln[serve]' -c constraints.txt")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402 - after the skips
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 180  # a cold start imports the runtime and probes it; the machine may be busy
LISTENING = re.compile(r"at http://[^:]+:(\d+)/v2/models/(\S+);")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    model: str
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, concurrency: int = 1) -> Any:
        return http_client.InferenceServerClient(self.url, concurrency=concurrency, network_timeout=60)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed ``name{label=value,...}``."""
        with urllib.request.urlopen(f"http://{self.url}/metrics", timeout=30) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def post(self, path: str, body: bytes | Iterator[bytes], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers=headers or {}, encode_chunked=not isinstance(body, bytes))
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start(artifact: Path, *flags: str, log: Path) -> Server:
    """``kiln serve ARTIFACT --port 0`` (the server picks a free port and says which), ready."""
    cmd = [sys.executable, "-m", "kiln.cli", "serve", str(artifact), "--port", "0", *flags]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if proc.poll() is not None:
            pytest.fail(f"kiln serve exited {proc.returncode}: {log.read_text()}")
        if match:
            server = Server(proc, int(match.group(1)), match.group(2), log)
            try:
                if server.client().is_server_ready():
                    return server
            except (ConnectionError, OSError, InferenceServerException):
                pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"kiln serve was not ready within {START_SECONDS} s: {log.read_text()}")


def run(server: Server, x: np.ndarray, binary: bool = True, name: str = "x", datatype: str = "FP32") -> np.ndarray:
    client = server.client()
    tensor = http_client.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [http_client.InferRequestedOutput("output", binary_data=binary)]
    return client.infer(server.model, [tensor], outputs=wanted).as_numpy("output")


def runner_outputs(folder: Path, x: np.ndarray) -> Arrays:
    """The artifact's own Runner, loaded here through the registry, on the same input."""
    from kiln.manifest import Manifest
    from kiln.targets import loader
    from kiln.targets.base import Artifact, RunOptions

    artifact = Artifact.from_manifest(folder)
    with loader(Manifest.read(folder)).load(artifact, RunOptions(threads=1)) as runner:
        return runner.infer({"x": x})


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module", params=["onnxruntime-fp32", "openvino-fp32"])
def served(
    request: pytest.FixtureRequest, digits_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    folder = digits_build / request.param
    if not folder.is_dir():
        pytest.skip(f"{request.param} was not built here (its runtime is not installed)")
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    server = start(folder, "--threads", "1", "--max-body-mb", "1", log=log)
    yield server, folder
    assert server.stop() == 0, server.stderr()


@pytest.fixture(scope="module")
def ort(digits_build: Path) -> Path:
    folder = digits_build / "onnxruntime-fp32"
    if not folder.is_dir():
        pytest.skip("onnxruntime-fp32 was not built here")
    return folder


def test_health_and_metadata_answer_tritonclient(served: tuple[Server, Path]) -> None:
    server, folder = served
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("digits")
    assert meta["platform"] == folder.name.split("-")[0] and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("digits", "1") == meta


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_artifacts_own_runner(served: tuple[Server, Path], binary: bool) -> None:
    server, folder = served
    for n in (1, 7, 64):
        x = digits(n, seed=n)
        np.testing.assert_array_equal(run(server, x, binary), runner_outputs(folder, x)["output"])


def test_bad_requests_get_their_status_and_a_message(served: tuple[Server, Path]) -> None:
    server, _ = served
    cases = [
        (dict(x=digits(1), name="y"), "has no input 'y'; its inputs are: x"),
        (dict(x=digits(1).astype(np.float64), datatype="FP64"), "datatype FP64, expected FP32"),
        (dict(x=digits(65)), r"input 'x' has shape \[65, 1, 8, 8\], expected \['batch\[1..64\]', 1, 8, 8\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InferenceServerException, match=message) as err:
            run(server, **kwargs)
        assert err.value.status() == "400"
    infer = "/v2/models/digits/infer"
    status, body = server.post(infer, b'{"inputs": [{"name": "x", ')
    assert status == 400 and body["error"].startswith("malformed JSON")
    status, body = server.post("/v2/models/nope/infer", b"{}")
    assert status == 404 and "serves 'digits'" in body["error"]
    big = b" " * (2 * 1024 * 1024)  # over --max-body-mb 1: refused from Content-Length, then while reading
    for payload in (big, iter([big[:65536]] * 32)):
        status, body = server.post(infer, payload)
        assert status == 413 and "--max-body-mb" in body["error"]
    assert run(server, digits(2)).shape == (2, 10)  # still serving


def test_metrics_parse_and_count_the_requests(served: tuple[Server, Path]) -> None:
    server, _ = served
    before = server.metrics()
    for _ in range(3):
        run(server, digits(1))
    with pytest.raises(InferenceServerException):
        run(server, digits(1), name="y")
    after = server.metrics()
    ok, bad = "kiln_requests_total{endpoint=infer,status=200}", "kiln_requests_total{endpoint=infer,status=400}"
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    assert after["kiln_request_failures_total{endpoint=infer,reason=bad_request}"] >= 1
    for name in ("kiln_request_duration_seconds_count{endpoint=infer}", "kiln_queue_duration_seconds_count"):
        assert after[name] > before.get(name, 0)
    assert after["kiln_batch_size_count"] >= 3 and "kiln_queue_depth" in after


def test_bounded_load_has_no_errors_and_right_answers(served: tuple[Server, Path]) -> None:
    """8 concurrent clients x 200 requests of 1 to 4 rows; batches merged or not, each answer
    matches the runner's (within float reassociation: a row may have run in a larger batch)."""
    server, folder = served
    x = digits(64, seed=5)
    expected = runner_outputs(folder, x)["output"]

    def client_loop(worker: int) -> int:
        client, errors = server.client(), 0
        rng = np.random.default_rng(worker)
        for _ in range(200):
            start = int(rng.integers(0, 60))
            rows = x[start : start + int(rng.integers(1, 5))]
            tensor = http_client.InferInput("x", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            got = client.infer("digits", [tensor]).as_numpy("output")
            if not np.allclose(got, expected[start : start + len(rows)], rtol=1e-4, atol=1e-5):
                errors += 1
        return errors

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(client_loop, range(8))) == 0
    samples = server.metrics()
    assert samples.get("kiln_requests_total{endpoint=infer,status=500}", 0) == 0


def test_concurrent_requests_share_one_batch_and_a_full_queue_is_503(ort: Path, tmp_path: Path) -> None:
    server = start(ort, "--threads", "1", "--max-delay-ms", "3000", "--max-queue", "4", log=tmp_path / "err")
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(run, server, digits(2, seed=i)) for i in range(4)]
            _wait_for(lambda: server.metrics()["kiln_queue_depth"] == 4, "4 requests waiting in the batch")
            with pytest.raises(InferenceServerException, match="queue is full") as err:
                run(server, digits(1))
            assert err.value.status() == "503"
            outputs = [a.result(timeout=60) for a in answers]
        for i, out in enumerate(outputs):
            np.testing.assert_allclose(out, runner_outputs(ort, digits(2, seed=i))["output"], rtol=1e-4, atol=1e-5)
        samples = server.metrics()
        assert samples["kiln_batch_size_count"] == 1 and samples["kiln_batch_size_sum"] == 4
        assert samples["kiln_batch_rows_sum"] == 8
        assert samples["kiln_request_failures_total{endpoint=infer,reason=unavailable}"] == 1
    finally:
        assert server.stop() == 0, server.stderr()


def test_sigterm_drains_in_flight_requests_and_exits_0(ort: Path, tmp_path: Path) -> None:
    server = start(ort, "--max-delay-ms", "3000", log=tmp_path / "err")
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(run, server, digits(1, seed=i)) for i in range(8)]
        _wait_for(lambda: server.metrics()["kiln_queue_depth"] == 8, "8 requests in flight")
        server.proc.send_signal(signal.SIGTERM)
        outputs = [a.result(timeout=60) for a in answers]
    assert all(out.shape == (1, 10) for out in outputs)
    assert server.proc.wait(60) == 0
    assert "8 infer requests answered, 0 failed" in server.stderr()


def _wait_for(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what} within {seconds} s")
        time.sleep(0.05)


SENTINEL_MODEL = '''
import torch
from torch import nn


class Sentinel(nn.Module):
    """Linear, except that it fails at run time on the value 666: a runtime error on demand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert_async((x != 666.0).all(), "sentinel value 666 met: this model fails on purpose")
        return self.lin(x)


def build() -> nn.Module:
    return Sentinel().eval()
'''

SENTINEL_TOML = """
[model]
name = "sentinel"
source = "model.py:build"
inputs = [{ name = "x", shape = ["batch", 4], dtype = "float32" }]
dims = { batch = { min = 1, opt = 2, max = 16 } }

[[target]]
name = "eager"
"""


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eager artifact whose program raises on a sentinel input value (a real runtime error of
    the saved torch.export program; seeded parity inputs never hit it)."""
    from kiln.config import load_config
    from kiln.pipeline.build import build

    root = tmp_path_factory.mktemp("sentinel")
    (root / "model.py").write_text(SENTINEL_MODEL)
    (root / "kiln.toml").write_text(textwrap.dedent(SENTINEL_TOML))
    results = build(load_config(root / "kiln.toml"), root / "build")
    assert [r.exit_code for r in results] == [0]
    return root / "build" / "sentinel" / "eager-fp32"


@pytest.mark.slow  # builds its own model, then serves it
def test_runtime_failure_is_500_for_that_request_only(sentinel: Path, tmp_path: Path) -> None:
    server = start(sentinel, "--max-delay-ms", "1000", log=tmp_path / "err")
    ok, bad = np.ones((1, 4), np.float32), np.full((1, 4), 666.0, np.float32)
    try:
        with pytest.raises(InferenceServerException, match="sentinel value 666 met") as err:
            run_sentinel(server, bad)
        assert err.value.status() == "500"
        assert run_sentinel(server, ok).shape == (1, 3)
        with ThreadPoolExecutor(4) as pool:  # merged into one batch: only the sentinel's request fails
            answers = [pool.submit(run_sentinel, server, x) for x in (ok, bad, 2 * ok, 3 * ok)]
            failed = [a.exception(timeout=60) is not None for a in answers]
        assert failed == [False, True, False, False]
        samples = server.metrics()
        assert samples["kiln_requests_total{endpoint=infer,status=500}"] == 2
        assert samples["kiln_request_failures_total{endpoint=infer,reason=runtime}"] == 2
        assert samples["kiln_batch_size_sum"] > samples["kiln_batch_size_count"]  # batches > 1 ran
    finally:
        assert server.stop() == 0, server.stderr()


def run_sentinel(server: Server, x: np.ndarray) -> np.ndarray:
    tensor = http_client.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return server.client().infer("sentinel", [tensor]).as_numpy("output")


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kiln.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=START_SECONDS)


def test_a_path_that_is_not_an_artifact_is_one_line_exit_2(digits_build: Path, tmp_path: Path) -> None:
    for path in (tmp_path / "missing", digits_build, ROOT / "README.md"):
        done = _kiln("serve", str(path))
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("kiln: error: "), done.stderr
    assert "serve one of them" in _kiln("serve", str(digits_build)).stderr


def test_a_port_in_use_is_one_line_exit_2(ort: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _kiln("serve", str(ort), "--port", str(taken.getsockname()[1]))
    assert done.returncode == 2 and "is in use" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_target_that_cannot_run_here_is_exit_5_with_the_registrys_reason(ort: Path, tmp_path: Path) -> None:
    from kiln.manifest import Manifest
    from kiln.targets import availability

    if availability("coreml").run:
        pytest.skip("Core ML runs here (macOS): no target to refuse")
    folder = tmp_path / "coreml-fp32"
    shutil.copytree(ort, folder)
    manifest = Manifest.read(folder)
    manifest.model_copy(update={"target": "coreml"}).write(folder)  # a Core ML artifact as Linux sees it
    done = _kiln("serve", str(folder))
    assert done.returncode == 5 and "unavailable here" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_max_batch_over_the_dim_is_one_line_exit_2(ort: Path) -> None:
    done = _kiln("serve", str(ort), "--port", "0", "--max-batch", "65")
    assert done.returncode == 2 and "--max-batch 65 exceeds" in done.stderr, done.stderr


def test_a_signed_bundle_is_verified_and_served(ort: Path, tmp_path: Path) -> None:
    """``kiln serve BUNDLE --pubkey``: extracted and checked by kiln.ship.verify, then served; a
    bundle whose signature does not verify with the key is refused before anything is served."""
    from kiln.ship.bundle import PackageOptions, package
    from kiln.ship.keys import keygen

    private, public = keygen(tmp_path / "release")
    bundle = package(ort, PackageOptions(out=tmp_path / "dist", sign=private)).bundle
    server = start(bundle, "--threads", "1", "--pubkey", str(public), log=tmp_path / "err")
    try:
        x = digits(5, seed=11)
        np.testing.assert_array_equal(run(server, x), runner_outputs(ort, x)["output"])
    finally:
        assert server.stop() == 0, server.stderr()
    _, other = keygen(tmp_path / "other")
    done = _kiln("serve", str(bundle), "--pubkey", str(other))
    assert done.returncode == 7 and done.stderr.count("\n") == 1, done.stderr
