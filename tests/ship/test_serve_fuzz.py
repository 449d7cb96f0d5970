"""Property: the request decoder (JSON and binary tensors, then validation and the response's
encoding) ends every body in a result or a 4xx :class:`RequestError`, never another exception (a
500 and a traceback on the server). Seeded (``derandomize``) and bounded: a few thousand bodies,
a few seconds. The wire-level cases (a real server) are in test_serve_limits.py."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.config import DimSpec, InputSpec
from kiln.serve.protocol import (
    NUMPY_BY_V2,
    Limits,
    ModelIO,
    RequestError,
    encode_response,
    json_depth,
    parse_request,
    validate,
)
from kiln.spec import Arrays, Signature

SIG = Signature(
    inputs=(
        InputSpec(name="x", shape=["batch", 3], dtype="float32"),
        InputSpec(name="ids", shape=["batch"], dtype="int64"),
    ),
    dims={"batch": DimSpec(min=1, max=4)},
    outputs=("y",),
)
IO = ModelIO("fuzz", SIG, SIG.outputs)
# numpy warns when a JSON number overflows its datatype (1e300 as FP16 is inf): a result, not an error.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
LIMITS = Limits(max_json=64 * 1024, max_depth=16)
FUZZ = settings(
    derandomize=True, deadline=None, max_examples=1200, suppress_health_check=list(HealthCheck), database=None
)


def model(arrays: Arrays) -> Arrays:
    """y = x * ids: NaN and infinities in x (JSON can send them) reach the output."""
    with np.errstate(all="ignore"):
        return {"y": arrays["x"] * arrays["ids"][:, None].astype(np.float32)}


def answer(body: bytes, header: str | None) -> str:
    """What the server does with the body, short of HTTP: 'ok' or the 4xx's status; any other
    exception fails the test (it would be a 500 with a traceback)."""
    try:
        request = parse_request(bytearray(body), header, LIMITS)
        encode_response(IO, "1", request, model(validate(request, IO)))
    except RequestError as err:
        assert 400 <= err.status < 500, err
        assert str(err)
        return str(err.status)
    return "ok"


scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(width=32),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(alphabet='0123.e-"[{\\', max_size=4),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def maybe(draw: st.DrawFn, value: Any, clean: bool) -> Any:
    """The right value, or (when not ``clean``, one time in eight) junk in its place or nothing."""
    if clean or draw(st.integers(0, 7)):
        return value
    return draw(junk | st.just(...))


@st.composite
def tensor(draw: st.DrawFn, name: str, shape: list[int], clean: bool) -> tuple[dict[str, Any], bytes]:
    """One input entry, valid or near it, and the binary bytes it brings."""
    datatype = "FP32" if name == "x" else "INT64"
    if not clean and not draw(st.integers(0, 3)):
        datatype = draw(st.sampled_from([*NUMPY_BY_V2, "BYTES", "fp32"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3) | st.sampled_from([[0, 2**62], [0] * 65, [-1]]))
    count = max(math.prod(shape), 0)
    numbers = st.floats(width=32) if datatype[0] == "F" else st.integers(-3, 3) | st.booleans()
    values = draw(st.lists(numbers if clean or draw(st.booleans()) else scalars, min_size=count, max_size=count))
    entry = {"name": name, "datatype": datatype, "shape": shape}
    entry = {k: draw(maybe(v, clean)) for k, v in entry.items()}
    raw = b""
    if draw(st.booleans()):
        entry["data"] = draw(maybe(values, clean))
        if draw(st.booleans()) and count and len(shape) > 1:  # nested row-major instead of flat
            entry["data"] = np.array(values, dtype=object).reshape(shape).tolist()
    else:
        dtype = NUMPY_BY_V2.get(datatype, np.dtype("<f4"))
        try:
            raw = np.asarray(values, dtype).tobytes()
        except (ValueError, TypeError, OverflowError):
            raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        size = draw(maybe(len(raw), clean))
        entry["parameters"] = draw(maybe({} if size is ... else {"binary_data_size": size}, clean))
    return {k: v for k, v in entry.items() if v is not ...}, raw


@st.composite
def request_body(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A v2 request for SIG: half of them valid, the others with parts junk or missing, inputs
    unknown, repeated or left out, the JSON cut or spliced, the header length wrong."""
    clean = draw(st.booleans())
    batch = draw(st.integers(1, 4) if clean else st.integers(0, 5))
    names = ["x", "ids"] if clean else draw(st.lists(st.sampled_from(["x", "ids", "z"]), max_size=3))
    entries = [draw(tensor(n, [batch, 3] if n == "x" else [batch], clean)) for n in names]
    doc: dict[str, Any] = {"inputs": draw(maybe([e for e, _ in entries], clean))}
    for key, value in (
        ("id", draw(st.text(max_size=3))),
        (
            "outputs",
            [{"name": draw(st.sampled_from(["y", "y", "q"])), "parameters": {"binary_data": draw(st.booleans())}}],
        ),
        ("parameters", {"binary_data_output": draw(st.booleans())}),
    ):
        if draw(st.booleans()):
            doc[key] = draw(maybe(value, clean))
    doc = {k: v for k, v in doc.items() if v is not ...}
    header = json.dumps(doc).encode()  # NaN and Infinity as Python (and Triton) write them
    binary = b"".join(raw for _, raw in entries)
    cut = "none" if clean else draw(st.sampled_from(["none"] * 5 + ["truncate", "splice", "header"]))
    if cut == "truncate":
        header = header[: draw(st.integers(0, len(header)))]
    elif cut == "splice":
        at = draw(st.integers(0, len(header)))
        header = header[:at] + draw(st.binary(min_size=1, max_size=4)) + header[at:]
    length: str | None = str(len(header)) if binary or draw(st.booleans()) else None
    if cut == "header":
        length = draw(st.sampled_from(["-1", "x", "", " 3", str(len(header) + 1), "9" * 30]))
    return header + binary, length


@FUZZ
@given(request_body())
def test_decoder_answers_every_request_with_a_result_or_a_4xx(body: tuple[bytes, str | None]) -> None:
    answer(*body)


@settings(derandomize=True, deadline=None, max_examples=1000, database=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-2, 210).map(str)))
def test_decoder_answers_any_bytes_with_a_result_or_a_4xx(body: bytes, header: str | None) -> None:
    answer(body, header)


@settings(derandomize=True, deadline=None, max_examples=400, database=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(alphabet='[]{}"\\a\n\u00e9', max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\b', max_size=3), inner),
        max_leaves=30,
    ),
    st.booleans(),
)
def test_json_depth_counts_what_json_nests_strings_aside(value: Any, ascii_only: bool) -> None:
    def depth(v: Any) -> int:
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)

    assert json_depth(json.dumps(value, ensure_ascii=ascii_only).encode()) == depth(value)


@pytest.mark.parametrize("opener", ["[", '{"a":'], ids=["lists", "objects"])
def test_a_body_100k_deep_is_a_400_in_milliseconds(opener: str) -> None:
    body = ('{"inputs": ' + opener * 100_000).encode()
    start = time.perf_counter()
    with pytest.raises(RequestError, match="nests 100001 deep and the server takes at most 32") as err:
        parse_request(bytearray(body), None)  # the defaults
    assert err.value.status == 400
    assert time.perf_counter() - start < 1.0


def test_the_default_depth_takes_a_rank_8_tensor_in_json() -> None:
    x = np.zeros((1,) * 8, np.float32)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]}
    assert parse_request(bytearray(json.dumps(doc).encode()), None).inputs[0].array.shape == x.shape


def test_a_json_part_over_its_limit_is_413_naming_the_flag() -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [20_000], "data": [0.5] * 20_000}]}
    with pytest.raises(RequestError, match="--max-json-mb") as err:
        parse_request(bytearray(json.dumps(doc).encode()), None, LIMITS)
    assert err.value.status == 413


def _request(binary: bool) -> Any:
    doc = {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": binary}}]}
    x = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    doc["inputs"] = [x, {"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]}]
    return parse_request(bytearray(json.dumps(doc).encode()), None)


def test_non_finite_outputs_go_in_binary_and_are_refused_in_json() -> None:
    y = np.array([[np.nan, np.inf, -np.inf]], np.float32)
    with pytest.raises(RequestError, match="holds NaN or infinity, which JSON cannot carry") as err:
        encode_response(IO, "1", _request(binary=False), {"y": y})
    assert err.value.status == 422
    encoded = encode_response(IO, "1", _request(binary=True), {"y": y})
    assert encoded.header_length is not None
    tail = np.frombuffer(encoded.body[encoded.header_length :], "<f4").reshape(1, 3)
    np.testing.assert_array_equal(tail, y)
    json.loads(encoded.body[: encoded.header_length], parse_constant=lambda c: pytest.fail(f"wrote {c}"))
