"""Property: whatever a config holds (random keys, types, values, dims, targets), ``kiln build``
never shows a traceback and exits with one of its documented codes."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.cli import main
from tests.conftest import CNN, to_toml

DOCUMENTED = {0, 2, 3, 5, 6}

scalars = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(alphabet="abcxyz_:./-0123", max_size=12),
)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from("abmx"), scalars, max_size=2)
)
sections = st.sampled_from(["model", "export", "bench", "gates", "generation", "calibration", "evaluation", "target"])
keys = st.sampled_from(
    [
        *("name", "source", "precision", "options", "opset", "strict", "batch", "threads", "dims", "inputs"),
        *("task", "samples", "new_tokens", "max_metric_drop", "tolerance", "prune", "bogus", "min_seconds"),
        "adapter",
    ]
)
dims = st.fixed_dictionaries(
    {"min": st.integers(-2, 10), "max": st.integers(-2, 100)}, optional={"opt": st.integers(-2, 100)}
)
targets = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["eager", "onnxruntime", "onnxrt", "tensorrt", ""])},
        optional={"precision": st.sampled_from(["fp32", "int8", "int4", "fp64", "int8-dynamic"])},
    ),
    max_size=2,
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(CNN)
    data["target"] = draw(targets)
    if draw(st.booleans()):
        data["model"]["dims"] = {"batch": draw(dims)}
    for _ in range(draw(st.integers(0, 3))):
        section, key = draw(sections), draw(keys)
        if section == "target":
            if data["target"]:
                data["target"][0][key] = draw(values)
            continue
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = draw(values)
    return data


def _finite(data: Any) -> bool:
    """TOML has no way to write some floats the strategy may give (inf is excluded already)."""
    if isinstance(data, dict):
        return all(_finite(v) for v in data.values())
    if isinstance(data, list):
        return all(_finite(v) for v in data)
    return not (isinstance(data, float) and math.isnan(data))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(configs())
def test_no_config_makes_kiln_show_a_traceback(data: dict[str, Any]) -> None:
    if not _finite(data):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kiln.toml"
        path.write_text(to_toml(data))
        result = CliRunner().invoke(main, ["build", str(path), "--out", str(Path(tmp) / "build")])
    assert result.exit_code in DOCUMENTED, (result.exit_code, result.output, data)
    assert "Traceback" not in result.output, result.output
    # Exit 0 or a KilnError's own code: never an exception that escaped the CLI.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
