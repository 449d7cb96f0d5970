"""``NAME[:PRECISION[:PRUNE-SLUG]]``: one parser for every command's ``--target``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import Selector, load_config, parse_selector, with_targets
from kiln.errors import ConfigError
from tests.conftest import CNN, write_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("onnxruntime", Selector("onnxruntime")),
        ("openvino:int8", Selector("openvino", "int8")),
        ("onnxruntime:int8:channel30", Selector("onnxruntime", "int8", "channel30")),
        ("onnxruntime::channel30", Selector("onnxruntime", None, "channel30")),
        ("onnxruntime:", Selector("onnxruntime")),
    ],
)
def test_parse_selector_reads_name_precision_and_slug(text: str, expected: Selector) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["", ":int8", "a:b:c:d", " onnxruntime", "openvino: int8"])
def test_parse_selector_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match=r"is not NAME\[:PRECISION\[:PRUNE-SLUG\]\]; write e\.g\.") as caught:
        parse_selector(text)
    assert "\n" not in str(caught.value)


def test_selector_matches_any_precision_and_variant_unless_it_names_one() -> None:
    assert parse_selector("onnxruntime").matches("onnxruntime", "int8", "channel30")
    assert parse_selector("onnxruntime:int8").matches("onnxruntime", "int8", "channel30")
    assert not parse_selector("onnxruntime:int8").matches("onnxruntime", "fp32")
    assert not parse_selector("onnxruntime:int8:channel30").matches("onnxruntime", "int8")
    assert not parse_selector("onnxruntime").matches("openvino", "fp32")


def test_with_targets_picks_configured_pruned_variants_by_slug(tmp_path: Path) -> None:
    pruned = {"name": "onnxruntime", "prune": {"method": "channel", "amount": 0.3}}
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime"}, pruned]})
    config = load_config(path)
    assert [t.key for t in with_targets(config, ["onnxruntime:fp32:channel30"]).target] == [
        "onnxruntime-fp32-channel30"
    ]
    assert len(with_targets(config, ["onnxruntime"]).target) == 2
    with pytest.raises(ConfigError, match="names no pruned variant"):
        with_targets(config, ["onnxruntime:fp32:magnitude50"])
