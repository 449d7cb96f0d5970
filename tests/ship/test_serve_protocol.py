"""kiln serve's pieces without a server: the v2 tensor encoding against tritonclient's own
encoder and decoder, the validation messages, and the batcher's merge, split and failure rules."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kiln.config import DimSpec, InputSpec
from kiln.serve.batcher import Batcher, BatchPolicy
from kiln.serve.protocol import ModelIO, RequestError, encode_response, parse_request, validate
from kiln.spec import Arrays, Signature

http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the dev extra)")
from tritonclient.http._utils import _get_inference_request  # noqa: E402 - after the skip

SIG = Signature(
    inputs=(
        InputSpec(name="ids", shape=["batch", "seq"], dtype="int64"),
        InputSpec(name="mask", shape=["batch", "seq"], dtype="int64"),
    ),
    dims={"batch": DimSpec(min=1, max=8), "seq": DimSpec(min=2, max=16)},
    outputs=("hidden", "pooled"),
)
IO = ModelIO("two", SIG, SIG.outputs)


def _client_body(arrays: Arrays, binary: bool, outputs: list[str] | None = None) -> tuple[bytes, str | None]:
    """A request body exactly as tritonclient.http builds it."""
    inputs = []
    for name, array in arrays.items():
        tensor = http.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    wanted = [http.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    body, json_size = _get_inference_request(inputs, "req-7", wanted, 0, False, False, 0, None, None)
    return body, None if json_size is None else str(json_size)


def _inputs(batch: int = 2, seq: int = 5) -> Arrays:
    rng = np.random.default_rng(batch * 100 + seq)
    return {
        "ids": rng.integers(0, 1000, (batch, seq)).astype(np.int64),
        "mask": np.ones((batch, seq), np.int64),
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_decodes_what_tritonclient_encodes(binary: bool) -> None:
    sent = _inputs()
    body, header = _client_body(sent, binary, outputs=["pooled"])
    request = parse_request(bytearray(body), header)
    arrays = validate(request, IO)
    assert request.id == "req-7"
    assert [o.name for o in request.outputs or []] == ["pooled"]
    for name, array in sent.items():
        np.testing.assert_array_equal(arrays[name], array)
        assert arrays[name].dtype == np.int64


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_decodes_with_tritonclient(binary: bool) -> None:
    body, header = _client_body(_inputs(), binary, outputs=["hidden", "pooled"])
    request = parse_request(bytearray(body), header)
    outputs = {"hidden": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7, "pooled": np.array([[True], [False]])}
    encoded = encode_response(IO, "1", request, outputs)
    assert (encoded.header_length is not None) == binary
    result = http.InferResult.from_response_body(encoded.body, header_length=encoded.header_length)
    assert result.get_response()["id"] == "req-7"
    for name, array in outputs.items():
        np.testing.assert_array_equal(result.as_numpy(name), array)


def test_request_without_outputs_gets_every_output_binary_as_tritonclient_asks() -> None:
    body, header = _client_body(_inputs(), binary=False)
    request = parse_request(bytearray(body), header)
    encoded = encode_response(IO, "1", request, {"hidden": np.zeros((2, 1), np.float32), "pooled": np.ones(2)})
    result = http.InferResult.from_response_body(encoded.body, header_length=encoded.header_length)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["hidden", "pooled"]
    assert encoded.header_length is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {"idz": a["ids"], "mask": a["mask"]}, "has no input 'idz'; its inputs are: ids, mask"),
        (lambda a: {"ids": a["ids"]}, "needs input 'mask' too"),
        (lambda a: {"ids": a["ids"].astype(np.float32), "mask": a["mask"]}, "datatype FP32, expected INT64"),
        (lambda a: {"ids": np.zeros((9, 5), np.int64), "mask": np.zeros((9, 5), np.int64)}, "batch[1..8]"),
        (lambda a: {"ids": a["ids"], "mask": np.ones((2, 6), np.int64)}, "inputs that share the dim 'seq'"),
    ],
    ids=["unknown-name", "missing", "dtype", "shape", "dims-disagree"],
)
def test_validation_names_what_is_wrong(change: object, message: str) -> None:
    body, header = _client_body(change(_inputs()), binary=True)  # type: ignore[operator]
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        validate(parse_request(bytearray(body), header), IO)
    assert err.value.status == 400


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    body, header = _client_body(_inputs(), binary=True)
    with pytest.raises(RequestError, match="binary tensor data"):
        parse_request(bytearray(body + b"\0" * 8), header)
    with pytest.raises(RequestError, match="binary_data_size"):
        parse_request(bytearray(body[:-8]), header)
    with pytest.raises(RequestError, match="Inference-Header-Content-Length"):
        parse_request(bytearray(body), str(len(body) + 1))


def test_unknown_output_and_classification_are_refused() -> None:
    body, header = _client_body(_inputs(), binary=True, outputs=["nope"])
    with pytest.raises(RequestError, match="has no output 'nope'; its outputs are: hidden, pooled"):
        validate(parse_request(bytearray(body), header), IO)
    doc = b'{"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]}],'
    doc += b' "outputs": [{"name": "pooled", "parameters": {"classification": 3}}]}'
    with pytest.raises(RequestError, match="classification"):
        parse_request(bytearray(doc), None)


# The batcher, around a real numpy model: y = x @ W, row by row, so any mix-up of rows shows.
W = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)


class Recorder:
    """A BatchObserver keeping what it is told."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def queued(self, depth: int) -> None:
        pass

    def batch(self, requests: int, rows: int, queue_seconds: list[float], run_seconds: float) -> None:
        self.sizes.append(requests)


def matmul(inputs: Arrays) -> Arrays:
    x = inputs["x"]
    if (x == 666).any():
        raise ValueError("sentinel met")
    return {"y": x @ W}


def _submit_all(batcher: Batcher, rows: list[int]) -> list[object]:
    futures: list[object] = []
    for i, n in enumerate(rows):
        futures.append(batcher.submit({"x": np.full((n, 4), i, np.float32)}))
    return futures


def test_batcher_merges_concurrent_requests_and_splits_them_back() -> None:
    seen = Recorder()
    batcher = Batcher(matmul, BatchPolicy(max_rows=16, max_delay=0.5), batch_axis=True, observer=seen)
    futures = _submit_all(batcher, [1, 3, 2, 4])
    results = [f.result(timeout=10) for f in futures]  # type: ignore[attr-defined]
    batcher.close(10)
    assert seen.sizes == [4]
    for i, (n, out) in enumerate(zip([1, 3, 2, 4], results, strict=True)):
        np.testing.assert_allclose(out["y"], np.full((n, 4), i, np.float32) @ W, rtol=1e-6)


def test_batcher_never_exceeds_the_row_cap_and_keeps_shapes_apart() -> None:
    seen = Recorder()
    gate = threading.Event()

    def slow(inputs: Arrays) -> Arrays:
        gate.wait(10)
        return matmul(inputs)

    batcher = Batcher(slow, BatchPolicy(max_rows=4, max_delay=0.2), batch_axis=True, observer=seen)
    futures = _submit_all(batcher, [3, 2, 1])  # 3 + 1 fit in 4 rows; 2 waits for the next batch
    odd = batcher.submit({"x": np.zeros((1, 5), np.float32)})  # another non-batch shape: its own batch
    time.sleep(0.3)
    gate.set()
    for f in futures:
        f.result(timeout=10)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):  # the odd shape reached the model alone (matmul refuses 5 columns)
        odd.result(timeout=10)
    batcher.close(10)
    assert sorted(seen.sizes) == [1, 1, 2]


def test_batcher_failure_is_confined_to_the_failing_request() -> None:
    batcher = Batcher(matmul, BatchPolicy(max_rows=16, max_delay=0.3), batch_axis=True)
    good = batcher.submit({"x": np.ones((2, 4), np.float32)})
    bad = batcher.submit({"x": np.full((1, 4), 666, np.float32)})
    also = batcher.submit({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(ValueError, match="sentinel"):
        bad.result(timeout=10)
    assert good.result(timeout=10)["y"].shape == (2, 3)
    assert also.result(timeout=10)["y"].shape == (1, 3)
    batcher.close(10)


def test_batcher_refuses_past_its_queue_and_drains_on_close() -> None:
    batcher = Batcher(matmul, BatchPolicy(max_rows=16, max_delay=5.0, max_queue=2), batch_axis=True)
    first, second = _submit_all(batcher, [1, 1])
    with pytest.raises(RequestError, match="queue is full") as err:
        batcher.submit({"x": np.zeros((1, 4), np.float32)})
    assert err.value.status == 503
    batcher.close(10)  # the two admitted ones run before the worker stops, without waiting 5 s
    assert first.result(timeout=0)["y"].shape == (1, 3)  # type: ignore[attr-defined]
    assert second.result(timeout=0)["y"].shape == (1, 3)  # type: ignore[attr-defined]
    with pytest.raises(RequestError, match="shutting down"):
        batcher.submit({"x": np.zeros((1, 4), np.float32)})


def test_batcher_without_gathering_runs_requests_alone() -> None:
    seen = Recorder()
    batcher = Batcher(matmul, BatchPolicy(max_rows=16, max_delay=0.0), batch_axis=True, observer=seen)
    for f in _submit_all(batcher, [1, 2, 3]):
        f.result(timeout=10)  # type: ignore[attr-defined]
    batcher.close(10)
    assert seen.sizes == [1, 1, 1]
