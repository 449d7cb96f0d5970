"""The Open Inference Protocol's tensors: decoding requests, checking them, encoding responses.

What ``tritonclient.http`` sends and expects (read from its ``_utils.py``, ``_infer_input.py`` and
``_infer_result.py``, and the KServe v2 protocol with Triton's binary tensor extension):

- a request body is a JSON object, optionally followed by raw tensor bytes; the header
  ``Inference-Header-Content-Length`` then gives the JSON part's length, and every input whose
  ``parameters.binary_data_size`` is set takes that many bytes, in input order, little-endian,
  row-major;
- an input without ``binary_data_size`` carries ``data``: a flat or nested row-major list;
- an output is returned as binary when its own ``parameters.binary_data`` says so, else when the
  request's ``parameters.binary_data_output`` does (the client sets it when it asks for no output
  by name); binary outputs carry ``parameters.binary_data_size`` and their bytes follow the JSON
  in output order, with ``Inference-Header-Content-Length`` on the response;
- an error is ``{"error": "<message>"}`` with a 4xx/5xx status.

BYTES (string) tensors are refused: no kiln signature has a string input (token ids are INT64).
Nothing here imports the web stack, so all of it is testable with plain bytes.

The decoder answers every body with a request or a :class:`RequestError` (4xx), never another
exception: the JSON part is held to :class:`Limits` (its size, and its nesting depth, counted on
the bytes before ``json.loads`` builds anything, so a body nested 100,000 deep costs one linear
scan, not a ``RecursionError``). ``NaN`` and ``Infinity`` are read in JSON inputs, as Triton and
Python's ``json`` write them; a response never writes them (strict JSON has no such numbers): an
output asked for as JSON that holds one is refused (422) with a message to ask for it in binary,
where IEEE bits carry every value.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.data import check_inputs
from kiln.errors import DataError, KilnError
from kiln.spec import Arrays, Signature

# v2 datatype names by numpy dtype, and back (little-endian on the wire).
V2_BY_NUMPY: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
NUMPY_BY_V2: dict[str, np.dtype] = {v: k.newbyteorder("<") for k, v in V2_BY_NUMPY.items()}

# A signature dtype as a client sends it. bfloat16 has no numpy dtype: kiln's runners take it as
# float32 and cast at the runtime's edge, so the server speaks FP32 for it too.
V2_BY_SPEC = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "FP32",
    "int64": "INT64",
    "int32": "INT32",
    "bool": "BOOL",
}

HEADER_LENGTH = "Inference-Header-Content-Length"

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may hold; each has a ``kiln serve`` flag."""

    max_body: int = 64 * MB  # bytes, after decompression (413)
    max_json: int = 16 * MB  # bytes of the JSON part (413): it becomes Python objects, ~10x its size
    max_depth: int = 32  # nesting of the JSON part (400): a v2 request is 3 deep plus the tensor rank
    max_head: int = 16 * 1024  # request line + headers (414 for the line alone, else 431)


# A JSON string (escapes included), a string without escapes, and the bytes the depth scan drops.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_PLAIN_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_STRINGS = bytes(b for b in range(256) if b not in b'[]{}"\\')


class RequestError(KilnError):
    """A request the server refuses, with its HTTP status: a bad request (400), an unknown model
    (404), a body over the limit (413), an output JSON cannot carry (422), a full queue (503).
    The message names what is wrong."""

    exit_code = 2

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's default


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool  # the request's ``binary_data_output``


def v2_datatype(dtype: np.dtype) -> str:
    try:
        return V2_BY_NUMPY[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise RequestError(f"the model returned a {dtype} tensor, which the v2 protocol cannot carry", 500) from None


def json_depth(text: bytes | bytearray) -> int:
    """How deep the JSON in ``text`` nests (``[]`` is 1), without parsing it: strings are cut
    out, the brackets left are counted with a running sum. Malformed JSON gives some number, and
    ``json.loads`` then refuses it."""
    text = bytes(text)
    brackets = text.translate(None, _NOT_BRACKETS_OR_STRINGS)  # a v2 request: brackets and a few quotes
    if b"\\" in brackets:  # escapes: cut the strings out of the whole text (a regex, ~4x slower)
        brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    else:
        brackets = _PLAIN_STRING.sub(b"", brackets).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    steps = opens.astype(np.int8) * 2 - 1
    return int(np.cumsum(steps, dtype=np.int32).max())


def parse_request(body: bytes | bytearray, header_length: str | None, limits: Limits | None = None) -> InferRequest:
    """Decode an infer request body (JSON, then binary tensors when ``header_length`` is set)."""
    limits = limits or Limits()
    size = len(body)
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= size:
            raise RequestError(
                f"{HEADER_LENGTH} {header_length!r} is not a length within the {size}-byte body; "
                "give the byte length of the JSON part"
            )
        json_part, binary = body[:length], memoryview(body)[length:]
    if len(json_part) > limits.max_json:
        raise RequestError(
            f"the JSON part of the request is {len(json_part)} bytes and the server takes at most "
            f"{limits.max_json}; send tensors in binary (tritonclient's default) or start kiln serve with "
            "a larger --max-json-mb",
            413,
        )
    depth = json_depth(json_part)
    if depth > limits.max_depth:
        raise RequestError(
            f"the request's JSON nests {depth} deep and the server takes at most {limits.max_depth} "
            "(a v2 request is 3 deep plus its tensors' rank); send 'data' flat, or start kiln serve with "
            "a larger --max-json-depth"
        )
    try:
        doc = json.loads(bytes(json_part))
    except RecursionError as err:  # only if --max-json-depth is set past what Python's parser takes
        raise RequestError(
            f"the request's JSON nests deeper than the server's JSON parser can go ({depth}); send 'data' flat"
        ) from err
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"malformed JSON in the inference request: {err}; send a v2 inference request") from err
    if not isinstance(doc, dict):
        raise RequestError("the inference request is not a JSON object; send {'inputs': [...]}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("the inference request has no 'inputs' list; give every input by name")
    offset = 0
    tensors = []
    for entry in inputs:
        tensor, used = _tensor(entry, binary[offset:])
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise RequestError(
            f"the body has {len(binary)} bytes of binary tensor data and the inputs' binary_data_size "
            f"add up to {offset}; send exactly the bytes the inputs declare"
        )
    params = _mapping(doc.get("parameters"), "the request's parameters")
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=tensors,
        outputs=_outputs(doc["outputs"]) if "outputs" in doc else None,
        binary_output=bool(params.get("binary_data_output", False)),
    )


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{what} are not a JSON object")
    return value


def _tensor(entry: Any, binary: memoryview) -> tuple[Tensor, int]:
    """One input tensor and how many binary bytes it took."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise RequestError("an input has no 'name'; every input is {'name', 'datatype', 'shape', 'data'}")
    name = entry["name"]
    datatype, shape = entry.get("datatype"), entry.get("shape")
    if not isinstance(datatype, str):
        raise RequestError(f"input {name!r} has datatype {datatype!r}; choose one of {', '.join(NUMPY_BY_V2)}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise RequestError(f"input {name!r} has shape {shape!r}; give a list of sizes >= 0")
    if datatype == "BYTES":
        raise RequestError(f"input {name!r} is BYTES: no kiln model takes strings; send its numeric datatype")
    if datatype not in NUMPY_BY_V2:
        raise RequestError(f"input {name!r} has datatype {datatype!r}; choose one of {', '.join(NUMPY_BY_V2)}")
    dtype = NUMPY_BY_V2[datatype]
    count = math.prod(shape)
    params = _mapping(entry.get("parameters"), f"input {name!r}'s parameters")
    if "binary_data_size" in params:
        nbytes = params["binary_data_size"]
        if type(nbytes) is not int or nbytes != count * dtype.itemsize or nbytes > len(binary):
            raise RequestError(
                f"input {name!r}: binary_data_size {nbytes!r} does not fit shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes) within the {len(binary)} binary bytes left; "
                "send the tensor's raw little-endian bytes"
            )
        array = _reshaped(name, np.frombuffer(binary[:nbytes], dtype=dtype), shape)
        return Tensor(name, datatype, array.astype(dtype.newbyteorder("="), copy=False)), nbytes
    if "data" not in entry:
        raise RequestError(f"input {name!r} has neither 'data' nor parameters.binary_data_size; send its values")
    try:
        array = np.asarray(entry["data"], dtype=dtype.newbyteorder("="))
    except (ValueError, TypeError, OverflowError) as err:
        raise RequestError(f"input {name!r}: its data are not {datatype} values ({err}); send numbers") from err
    if array.size != count:
        raise RequestError(
            f"input {name!r} has {array.size} values in 'data' and shape {shape} needs {count}; "
            "send the values row-major, flat or nested"
        )
    return Tensor(name, datatype, _reshaped(name, array, shape)), 0


def _reshaped(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    """``array`` in ``shape``, whose size it already has; numpy still refuses more than 64 axes
    and a shape whose size overflows (an empty tensor with a huge dim)."""
    try:
        return array.reshape(shape)
    except ValueError as err:
        raise RequestError(f"input {name!r} cannot take shape {shape} ({err}); give the tensor's real shape") from err


def _outputs(value: Any) -> list[RequestedOutput]:
    if not isinstance(value, list):
        raise RequestError("the request's 'outputs' is not a list; give [{'name': ...}] or leave it out")
    wanted = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise RequestError("a requested output has no 'name'")
        params = _mapping(entry.get("parameters"), f"output {entry['name']!r}'s parameters")
        if params.get("classification") or params.get("class_count"):
            raise RequestError(
                f"output {entry['name']!r} asks for classification (class_count), which kiln serve does not "
                "implement; ask for the raw output and take its top-k in the client"
            )
        binary = params.get("binary_data")
        wanted.append(RequestedOutput(entry["name"], None if binary is None else bool(binary)))
    return wanted


@dataclass(frozen=True)
class ModelIO:
    """What a model takes and gives, as the protocol names it: checked against every request."""

    name: str
    signature: Signature
    outputs: tuple[str, ...]

    def input_datatype(self, name: str) -> str:
        spec = next(s for s in self.signature.inputs if s.name == name)
        return V2_BY_SPEC[spec.dtype]


def validate(request: InferRequest, io: ModelIO) -> Arrays:
    """The request's inputs as the runner takes them, or a 400 naming the first thing wrong: an
    unknown, missing or repeated input, a datatype, a shape outside the dims (kiln's own check,
    so the message reads as in a build), dims that disagree between inputs, an unknown output."""
    sig = io.signature
    names = sig.input_names
    arrays: Arrays = {}
    for tensor in request.inputs:
        if tensor.name not in names:
            raise RequestError(f"model {io.name!r} has no input {tensor.name!r}; its inputs are: {', '.join(names)}")
        if tensor.name in arrays:
            raise RequestError(f"input {tensor.name!r} is given twice; give each input once")
        want = io.input_datatype(tensor.name)
        if tensor.datatype != want:
            raise RequestError(
                f"model {io.name!r}: input {tensor.name!r} has datatype {tensor.datatype}, expected {want}; "
                f"send it as {want}"
            )
        arrays[tensor.name] = tensor.array
    missing = [n for n in names if n not in arrays]
    if missing:
        raise RequestError(f"model {io.name!r} needs input {missing[0]!r} too; its inputs are: {', '.join(names)}")
    try:
        check_inputs(sig, arrays, f"model {io.name!r}")
    except DataError as err:
        raise RequestError(str(err)) from None
    _same_dims(sig, arrays)
    for out in request.outputs or ():
        if out.name not in io.outputs:
            raise RequestError(
                f"model {io.name!r} has no output {out.name!r}; its outputs are: {', '.join(io.outputs)}"
            )
    return arrays


def _same_dims(sig: Signature, arrays: Arrays) -> None:
    """A named dim shared by inputs (batch, sequence) takes one size per request."""
    seen: dict[str, tuple[int, str]] = {}
    for spec in sig.inputs:
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str):
                continue
            size = arrays[spec.name].shape[axis]
            first = seen.setdefault(dim, (size, spec.name))
            if first[0] != size:
                raise RequestError(
                    f"input {spec.name!r} has {dim}={size} and input {first[1]!r} has {dim}={first[0]}; "
                    f"inputs that share the dim {dim!r} take the same size"
                )


@dataclass(frozen=True)
class Encoded:
    body: bytes
    header_length: int | None  # set when binary tensors follow the JSON


def encode_response(io: ModelIO, version: str, request: InferRequest, outputs: Arrays) -> Encoded:
    """The v2 response: the requested outputs (all by default), JSON or binary each."""
    wanted = request.outputs or [RequestedOutput(name, None) for name in io.outputs]
    entries, chunks = [], []
    for out in wanted:
        array = np.ascontiguousarray(outputs[out.name])
        entry: dict[str, Any] = {"name": out.name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if out.binary if out.binary is not None else request.binary_output:
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(
                    f"output {out.name!r} holds NaN or infinity, which JSON cannot carry; ask for it in binary "
                    "(the output's parameters.binary_data: true, or the request's binary_data_output: true; "
                    "tritonclient's InferRequestedOutput(name, binary_data=True))",
                    422,
                )
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": io.name, "model_version": version, "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return Encoded(header, None)
    return Encoded(b"".join([header, *chunks]), len(header))
