"""Each target's typed ``options``: validated when the config is read, one line naming the key.

No toolchain needed: the options models import none.
"""

from __future__ import annotations

from typing import Any

import pytest

from kiln.config import TargetConfig
from kiln.errors import ConfigError
from kiln.targets import REGISTRY, implementation, target_options
from kiln.targets.base import NoOptions, TargetOptions


def options(name: str, precision: str, **values: Any) -> Any:
    return target_options(TargetConfig(name=name, precision=precision, options=values))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_target_has_a_typed_options_model_whose_defaults_validate(name: str) -> None:
    model = implementation(name).options_model
    assert issubclass(model, TargetOptions)
    for precision in REGISTRY[name].precision_names:
        assert isinstance(options(name, precision), model)


def test_eager_takes_no_options() -> None:
    assert implementation("eager").options_model is NoOptions
    with pytest.raises(ConfigError, match="unknown key 'threads'; known keys: none"):
        options("eager", "fp32", threads=2)


@pytest.mark.parametrize(
    ("name", "precision", "key", "suggestion"),
    [
        ("onnxruntime", "int8", "calibrate_methd", "calibration_method"),
        ("openvino", "int8", "fast_bias_corection", "fast_bias_correction"),
        ("aoti", "int8", "fuse", "fuse_int8"),
        ("tensorrt", "fp16", "workspace", "workspace_mb"),
        ("coreml", "int8", "block", "block_size"),
    ],
)
def test_unknown_key_is_a_config_error_naming_it_with_did_you_mean(
    name: str, precision: str, key: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError) as err:
        options(name, precision, **{key: 1})
    message = str(err.value)
    assert message.startswith(f"[[target]] {name}:{precision} options: unknown key {key!r}")
    assert f"did you mean {suggestion!r}?" in message and "known keys:" in message
    assert "\n" not in message and err.value.exit_code == 2


def test_tensorrt_refuses_the_old_calibrate_method_spelling() -> None:
    with pytest.raises(ConfigError, match="unknown key 'calibrate_method'; did you mean 'calibration_method'"):
        options("tensorrt", "int8", calibrate_method="entropy")
    assert options("tensorrt", "int8", calibration_method="entropy").calibration_method == "entropy"


@pytest.mark.parametrize(
    ("name", "precision", "values", "fragment"),
    [
        ("onnxruntime", "int8", {"calibration_method": "best"}, "calibration_method: Input should be 'minmax'"),
        ("onnxruntime", "int8", {"percentile": 80.0}, "percentile: Input should be greater than or equal to 90"),
        ("onnxruntime", "int8-dynamic", {"per_channel": "yes"}, "per_channel: Input should be a valid boolean"),
        ("onnxruntime", "int8", {"op_types": "MatMul"}, "op_types: Input should be a valid list"),
        ("openvino", "int4", {"group_size": 8192}, "group_size: Input should be less than or equal to 4096"),
        ("openvino", "int4", {"ratio": 1.5}, "ratio: Input should be less than or equal to 1"),
        ("openvino", "int8", {"preset": "fast"}, "preset: Input should be 'performance' or 'mixed'"),
        ("openvino", "int4", {"group_size_fallback": "drop"}, "group_size_fallback: Input should be 'adjust'"),
        ("aoti", "int8", {"fuse_int8": "always"}, "fuse_int8: Input should be a valid boolean"),
        ("tensorrt", "fp16", {"workspace_mb": 8}, "workspace_mb: Input should be greater than or equal to 16"),
        ("tensorrt", "fp16", {"optimization_level": 7}, "optimization_level: Input should be less than or equal to 5"),
        ("tensorrt", "int8", {"int8_fallback": "int4"}, "int8_fallback: Input should be 'fp16' or 'fp32'"),
        ("tensorrt", "int8", {"qdq_op_types": ["Conv", "Add"]}, "qdq_op_types: 'Add' is not one of Conv, MatMul"),
        ("tensorrt", "fp8", {"calibration_method": "minmax"}, "calibration_method: fp8 calibrates with 'distribution'"),
        ("tensorrt", "fp16", {"profiles": [{"batch": {"min": 1, "max": "8"}}]}, "profiles.0.batch.max: Input should"),
        ("coreml", "fp16", {"compute_units": "tpu"}, "compute_units: Input should be 'all'"),
        ("coreml", "int8", {"granularity": "per_tensor"}, "granularity: int8 takes per_channel or per_block"),
        ("coreml", "palettize4", {"nbits": 6}, "nbits: palettize4 stores 4-bit palettes, not 6"),
        ("coreml", "palettize", {"nbits": 5}, "nbits: Input should be 1, 2, 3, 4, 6 or 8"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_key(
    name: str, precision: str, values: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        options(name, precision, **values)
    message = str(err.value)
    assert message.startswith(f"[[target]] {name}:{precision} options: ")
    assert fragment in message and "\n" not in message


@pytest.mark.parametrize(
    ("precision", "good", "bad"),
    [("int8-weights", "int8_sym", "int4_sym"), ("int4", "int4_asym", "int8_asym")],
)
def test_openvino_mode_is_checked_against_the_precision(precision: str, good: str, bad: str) -> None:
    assert options("openvino", precision, mode=good).mode == good
    with pytest.raises(ConfigError, match=f"mode: '{bad}' is not an {precision} mode; choose"):
        options("openvino", precision, mode=bad)


def test_defaults_are_the_toolchain_defaults_kiln_measured() -> None:
    ort = options("onnxruntime", "int8")
    assert (ort.calibration_method, ort.percentile, ort.per_channel, ort.op_types) == ("minmax", 99.999, None, None)
    ov = options("openvino", "int4")
    assert (ov.mode, ov.group_size, ov.ratio, ov.group_size_fallback) == (None, None, 1.0, "adjust")
    assert (ov.range_estimator, ov.fast_bias_correction, ov.accuracy_control) == ("minmax", True, True)
    trt = options("tensorrt", "int8")
    assert (trt.workspace_mb, trt.int8_fallback, trt.timing_cache, trt.sparse_weights) == (2048, "fp16", True, False)
    assert options("aoti", "int8").fuse_int8 is None
    assert options("coreml", "fp16", compute_units="CPU_AND_NE").compute_units == "cpu_and_ne"


def test_options_are_frozen() -> None:
    ort = options("onnxruntime", "int8")
    with pytest.raises(ValueError, match="frozen"):
        ort.calibration_method = "entropy"
