"""Property: whatever a ``kiln.toml`` holds (a valid config with random keys, values and types
put in, taken out or replaced; TOML text with bytes inserted, removed or cut; bytes that are not
UTF-8; nesting thousands deep) and whatever mapping the API is handed, the config loader ends
in a loaded config or one ``ConfigError`` line (exit 2), never another exception.

Seeded (``derandomize``) and bounded: 2,500 configs and 300 target selectors, loaded in-process
(no build: test_config_property.py runs ``kiln build`` on a few dozen). The regressions the fuzz
found are at the end, each its own case.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kiln.config import KilnConfig, load_config, parse_config, parse_selector
from kiln.errors import ConfigError

FUZZ = settings(
    derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck), max_examples=1000
)
BASE: dict[str, Any] = {
    "model": {
        "name": "cnn",
        "source": "models.py:tiny_cnn",
        "inputs": [{"name": "x", "shape": ["batch", 3, 16, 16]}, {"name": "ids", "shape": ["batch"], "dtype": "int64"}],
        "dims": {"batch": {"min": 1, "opt": 2, "max": 8}},
        "ensemble": {"members": ["a.py:f", "b.py:g"], "method": "weighted", "weights": [1.0, 2.0]},
    },
    "export": {"opset": 20},
    "calibration": {"source": "models.py:calibration", "samples": 32},
    "evaluation": {"source": "models.py:evaluation", "metric": "top1"},
    "bench": {"batch": [1, 8], "threads": 2},
    "gates": {"max_metric_drop": 0.01},
    "generation": {"prompts": ["hi"], "new_tokens": 8},
    "recovery": {"source": "models.py:train", "epochs": 1},
    "target": [
        {"name": "onnxruntime", "precision": "int8", "tolerance": {"min_cosine": 0.99}},
        {"name": "openvino", "prune": {"method": "channel", "amount": 0.5}},
    ],
}
del BASE["model"]["ensemble"]  # a source and an ensemble are one or the other; edits may add it back


def _known_keys(model: type[BaseModel] = KilnConfig, seen: frozenset[type] = frozenset()) -> set[str]:
    """Every key some config table takes, so that edits often hit a real key with a wrong value."""
    from typing import get_args

    keys = set(model.model_fields)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            stack += get_args(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
                keys |= _known_keys(annotation, seen | {model})
    return keys


KEYS = sorted(_known_keys() - {"root"})
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
    st.sampled_from(["sourse", "nmae", "root", "", " ", "a.b", "model", "target"]),
    st.text(max_size=10),  # quoted in TOML: newlines, controls, any plane
)
scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.floats(),  # nan and inf too: TOML writes both
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["batch", "fp32", "int8", "channel", "top1", "onnxruntime", "eager", "float32", "a\nb", "\x1b[2J"]),
    st.datetimes(datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31)),
    st.dates(),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=10
)


def _key(k: str) -> str:
    # A basic string: TOML reads the \n, \t and \uXXXX escapes JSON writes (not its surrogate pairs).
    return json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    """A value in TOML (inline tables for mappings, everything on one line)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)  # repr gives inf, -inf, 1e+300
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _key(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    """Top-level tables as ``[table]`` and ``[[table]]``, everything else inline."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not _is_table(v)]
    for section, body in data.items():
        if isinstance(body, dict):
            lines += [f"[{_key(section)}]", *(f"{_key(k)} = {_value(v)}" for k, v in body.items())]
        elif _is_table(body):
            for row in body:
                lines += [f"[[{_key(section)}]]", *(f"{_key(k)} = {_value(v)}" for k, v in row.items())]
    return "\n".join(lines) + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))


def _edit(data: Any, path: list[int], action: str, key: str, value: Any) -> Any:
    """``data`` with one node changed: ``path`` picks a child at each step (an index into a
    table's keys or an array), then ``action`` sets ``key`` in a table, replaces the node, or
    removes one of its keys."""
    if path and isinstance(data, dict | list) and data:
        names = list(data) if isinstance(data, dict) else list(range(len(data)))
        name = names[path[0] % len(names)]
        out = copy.copy(data)
        out[name] = _edit(data[name], path[1:], action, key, value)
        return out
    if action == "set" and isinstance(data, dict):
        return {**data, key: value}
    if action == "drop" and isinstance(data, dict) and data:
        return {k: v for i, (k, v) in enumerate(data.items()) if i != hash(key) % len(data)}
    return value


@st.composite
def edited(draw: st.DrawFn) -> dict[str, Any]:
    """The base config after one to four random edits."""
    data: Any = BASE
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.lists(st.integers(0, 20), max_size=4))
        action = draw(st.sampled_from(["set", "set", "replace", "drop"]))
        data = _edit(data, path, action, draw(keys), draw(values))
    return data if isinstance(data, dict) else {"model": data}


@st.composite
def toml_bytes(draw: st.DrawFn) -> bytes:
    """An edited config's TOML, then bytes inserted, replaced or removed, or the text cut."""
    text = bytearray(to_toml(draw(edited())).encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "replace", "remove"]))
        chunk = draw(
            st.one_of(st.binary(min_size=1, max_size=3), st.sampled_from([b"[", b"]", b"{", b'"', b"=", b"\n"]))
        )
        text[at : at + (0 if kind == "insert" else len(chunk))] = b"" if kind == "remove" else chunk
    return bytes(text[: draw(st.one_of(st.none(), st.integers(0, len(text))))])


deep = st.builds(
    lambda depth, opener: b"x = " + opener * depth + b"1" + (b"]" if opener == b"[" else b"}") * depth + b"\n",
    st.sampled_from([50, 1_000, 50_000]),
    st.sampled_from([b"[", b"{a="]),
)
files = st.one_of(toml_bytes(), toml_bytes(), st.binary(max_size=200), deep)


def _one_line(err: ConfigError) -> str:
    message = str(err)
    assert len(message.splitlines()) == 1 and message.strip() == message, repr(message)
    assert err.exit_code == 2
    return message


# A RAM folder where there is one: thousands of small writes and removals take a third of the time.
MEMORY = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(scope="module")
def config_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-", dir=MEMORY) as folder:
        yield Path(folder) / "kiln.toml"


@FUZZ
@given(files)
def test_every_kiln_toml_loads_or_is_one_config_error_line(config_file: Path, data: bytes) -> None:
    config_file.write_bytes(data)
    try:
        loaded = load_config(config_file)
    except ConfigError as err:
        _one_line(err)
        return
    assert isinstance(loaded, KilnConfig)


@settings(FUZZ, max_examples=1200)
@given(edited())
def test_every_mapping_the_api_is_handed_parses_or_is_one_config_error_line(data: dict[str, Any]) -> None:
    try:
        parse_config(data, Path("."))
    except ConfigError as err:
        _one_line(err)


@settings(FUZZ, max_examples=300)
@given(st.text(max_size=20))
def test_every_target_selector_parses_or_is_one_config_error_line(text: str) -> None:
    try:
        parse_selector(text)
    except ConfigError as err:
        _one_line(err)


def test_the_base_config_loads(config_file: Path) -> None:
    """The edits start from a config kiln accepts (else every case above is a refusal)."""
    config_file.write_text(to_toml(BASE))
    assert [t.key for t in load_config(config_file).target] == ["onnxruntime-int8", "openvino-fp32-channel50"]


# What the fuzz found, each held by its own case.


def _refused(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return _one_line(caught.value)


def test_a_config_that_is_not_utf8_is_one_line_not_a_unicode_error(tmp_path: Path) -> None:
    assert "not UTF-8 text (byte 16)" in _refused(tmp_path / "kiln.toml", b'[model]\nname = "\xff"\n')


def test_arrays_nested_thousands_deep_are_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    for opener, closer in ((b"[", b"]"), (b"{a=", b"}")):
        line = _refused(tmp_path / "kiln.toml", b"x = " + opener * 20_000 + b"1" + closer * 20_000)
        assert "nested too deep" in line


def test_a_key_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    base = b'[model]\nname = "m"\nsource = "m.py:f"\n'
    assert "unknown key 'model.a\\nb'" in _refused(tmp_path / "kiln.toml", base + b'"a\\nb" = 1\n')
    dims = base + b'[model.dims."a\\nb"]\nmin = "x"\nmax = 1\n'
    assert "'model.dims.a\\nb.min'" in _refused(tmp_path / "kiln.toml", dims)
    twice = base + b'[[target]]\nname = "x\\ny"\n[[target]]\nname = "x\\ny"\n'
    assert "are identical (x\\ny:fp32)" in _refused(tmp_path / "kiln.toml", twice)


def test_a_nan_or_infinite_figure_is_refused(tmp_path: Path) -> None:
    """A nan min_cosine passed every artifact: no figure is less than nan."""
    base = b'[model]\nname = "m"\nsource = "m.py:f"\n'
    tolerance = base + b'[[target]]\nname = "eager"\ntolerance = { min_cosine = nan }\n'
    assert "'target.0.tolerance.min_cosine': Input should be a finite number" in _refused(
        tmp_path / "kiln.toml", tolerance
    )
    assert "'bench.min_seconds'" in _refused(tmp_path / "kiln.toml", base + b"[bench]\nmin_seconds = inf\n")


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_bytes(b'\xef\xbb\xbf[model]\nname = "m"\nsource = "m.py:f"\n')
    assert load_config(path).model.name == "m"


def test_a_folder_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a folder; pass the path of a kiln.toml \(e.g. .*kiln.toml\)"):
        load_config(tmp_path)
