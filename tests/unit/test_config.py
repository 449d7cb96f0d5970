"""Config validation: every mistake is one ConfigError line naming the key, before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln.config import load_config, parse_config, with_targets
from kiln.errors import ConfigError, UnknownTargetError
from kiln.targets import check_config
from tests.conftest import CNN, write_config


def test_parse_config_accepts_the_digits_example() -> None:
    config = load_config(Path("examples/digits/kiln.toml"))
    assert config.model.name == "digits"
    assert [t.key for t in config.target][:2] == ["eager-fp32", "aoti-fp32"]
    assert config.root == Path("examples/digits").resolve()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": {**CNN["model"], "nmae": "x"}}, "unknown key 'model.nmae'"),
        ({"bench": {"batch": [1], "thread": 2}}, "unknown key 'bench.thread'"),
        ({"model": {**CNN["model"], "dims": {"batch": {"min": 8, "max": 2}}}}, "min <= opt <= max"),
        ({"model": {**CNN["model"], "dims": {"batch": {"min": 1, "opt": 9, "max": 8}}}}, "min <= opt <= max"),
        ({"model": {**CNN["model"], "dims": {}}}, "dim 'batch' is used in an input shape but not declared"),
        ({"bench": {"threads": "two"}}, "'bench.threads'"),
        ({"evaluation": {"source": "m.py:f", "metric": "f1"}}, "unknown metric 'f1'"),
        ({"model": {**CNN["model"], "name": "has space"}}, "'model.name'"),
    ],
)
def test_parse_config_raises_one_line_naming_the_key(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**CNN, **change}, Path("."))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"name": "openvnio"}, "unknown target 'openvnio' (did you mean 'openvino'?); choose one of: eager, aoti"),
        ({"name": "onnxruntime", "precision": "int3"}, "has no precision 'int3'; choose one of: fp32"),
    ],
)
def test_unknown_target_or_precision_lists_the_choices(target: dict, expected: str) -> None:
    with pytest.raises(UnknownTargetError, match=re.escape(expected)):
        check_config(parse_config({**CNN, "target": [target]}, Path(".")), "python")


def test_load_config_reports_toml_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text("[model\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_with_targets_overrides_and_keeps_configured_options(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime", "options": {"x": 1}}]})
    config = with_targets(load_config(path), ["onnxruntime", "openvino:bf16"])
    assert [(t.name, t.precision, t.options) for t in config.target] == [
        ("onnxruntime", "fp32", {"x": 1}),
        ("openvino", "bf16", {}),
    ]
    with pytest.raises(UnknownTargetError):
        check_config(with_targets(config, ["nope:fp32"]), "python")
