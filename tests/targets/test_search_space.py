"""The quantizer settings ``kiln tune`` searches are declared by each target's options model,
beside the options they search: every axis names a field of that model, for a precision of the
target's row, with values the model accepts at that precision."""

from __future__ import annotations

import pytest

from kiln.config import TargetConfig
from kiln.targets import REGISTRY, implementation, target_options
from kiln.tune.space import axes


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_searched_option_is_a_field_with_values_the_model_accepts(name: str) -> None:
    model = implementation(name).options_model
    for precision, declared in model.search_space.items():
        assert precision in REGISTRY[name].precision_names, (name, precision)
        assert axes(name, precision) == list(declared)
        for option, values in declared:
            assert option in model.model_fields, (name, precision, option)
            assert values, (name, precision, option)
            for value in values:
                target_options(TargetConfig(name=name, precision=precision, options={option: value}))


def test_quantized_precisions_have_axes_and_float_ones_none() -> None:
    assert [o for o, _ in axes("onnxruntime", "int8")] == ["calibration_method", "per_channel"]
    assert axes("onnxruntime", "fp32") == []
    searched = {(n, p) for n in REGISTRY for p in implementation(n).options_model.search_space}
    assert all(REGISTRY[n].precision(p).quantized for n, p in searched), searched
