"""The TensorRT target's work on the ONNX, no TensorRT needed: optimization-profile derivation,
the Q/DQ ONNX and its checks (on a tiny CNN and a tiny MLP built in code), the 2:4 pattern check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.config import DimSpec, InputSpec
from kiln.errors import ConfigError, DataError
from kiln.spec import Signature
from kiln.targets.tensorrt.profiles import derive_profiles, pick_profile, read_profiles, write_profiles
from kiln.targets.tensorrt.qdq import QDQ_ONNX, QDQRecipe, compare_qdq, prepare_qdq, qdq_placement, recipe_for
from kiln.targets.tensorrt.sparsity import check_2of4
from tests.targets import tensorrt_helpers
from tests.targets.tensorrt_helpers import (
    INT8,
    SHAPES,
    onnx,
    samples,
    signature,
)

models = tensorrt_helpers.models  # the shared fixture

# --- optimization profiles ---------------------------------------------------------------------


def test_profiles_default_from_named_dims() -> None:
    sig = signature(["batch", 3, "size", "size"], {"batch": (1, 4, 32), "size": (8, 16, 64)})
    (profile,) = derive_profiles(sig)
    (x,) = profile.inputs
    assert (x.min, x.opt, x.max) == ((1, 3, 8, 8), (4, 3, 16, 16), (32, 3, 64, 64))


def test_profiles_reject_min_above_opt() -> None:
    sig = signature(["batch", 16], {"batch": (1, 1, 64)})
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        derive_profiles(sig, [{"batch": {"min": 8, "opt": 4, "max": 16}}])


def test_profiles_reject_opt_above_max_in_the_spec_itself() -> None:
    dims = {"batch": DimSpec.model_construct(min=1, opt=40, max=32)}  # bypasses the config's own check
    sig = Signature((InputSpec(name="x", shape=["batch", 16]),), dims, ("y",))
    with pytest.raises(ConfigError, match="opt=40 max=32"):
        derive_profiles(sig)


def test_profiles_reject_range_outside_capture_and_unknown_dim() -> None:
    sig = signature(["batch", 16], {"batch": (1, 1, 64)})
    with pytest.raises(ConfigError, match=r"captured range 1\.\.64"):
        derive_profiles(sig, [{"batch": {"min": 1, "opt": 8, "max": 128}}])
    with pytest.raises(ConfigError, match="unknown dim 'seq'"):
        derive_profiles(sig, [{"seq": {"min": 1, "max": 8}}])


def test_profiles_several_are_picked_per_shape_and_round_trip(tmp_path: Path) -> None:
    sig = signature(["batch", 16], {"batch": (1, 1, 64)})
    profiles = derive_profiles(
        sig, [{"batch": {"min": 1, "opt": 1, "max": 8}}, {"batch": {"min": 9, "opt": 32, "max": 64}}]
    )
    write_profiles(profiles, tmp_path)
    again = read_profiles(tmp_path)
    assert again == profiles
    assert pick_profile(again, {"x": (4, 16)}) == 0
    assert pick_profile(again, {"x": (20, 16)}) == 1
    with pytest.raises(DataError, match="fit no optimization profile"):
        pick_profile(again, {"x": (4, 15)})


# --- Q/DQ ONNX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_qdq_int8_follows_tensorrt_placement_and_matches_fp32(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    report = prepare_qdq(models[name], tmp_path, samples(SHAPES[name]), recipe_for("int8"), INT8)
    proto = onnx.load(str(tmp_path / QDQ_ONNX))
    onnx.checker.check_model(proto, full_check=True)
    placement = report["placement"]
    weighted = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert placement["problems"] == []
    assert sum(placement["quantized_layers"].values()) == len(weighted) == 3
    assert placement["unquantized_layers"] == []
    # One dedicated pair on each weighted layer's activation input and on its weight; none elsewhere.
    assert placement["QuantizeLinear"] == placement["DequantizeLinear"] == 2 * len(weighted)
    figures = report["parity_vs_fp32"]["outputs"]["y"]
    assert figures["cosine"] >= 0.98 and report["parity_breaches"] == []
    assert json.loads((tmp_path / "qdq.json").read_text())["recipe"]["weights"] == "per-channel (output axis)"


def test_qdq_check_catches_placement_tensorrt_rejects(models: dict[str, Path], tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples(SHAPES["cnn"], 8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    # ONNX Runtime's CPU defaults: asymmetric uint8 activations, quantized biases, shared pairs.
    out = tmp_path / "cpu-default.onnx"
    quantize_static(
        str(models["cnn"]), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8
    )
    problems = qdq_placement(onnx.load(str(out)), QDQRecipe("int8"))["problems"]
    assert any("quantized type 2, expected 3" in p for p in problems)  # uint8, not int8
    assert any("bias is quantized" in p for p in problems)
    assert any("not per output channel" in p for p in problems)


def test_qdq_comparison_fails_a_broken_model(models: dict[str, Path], tmp_path: Path) -> None:
    prepare_qdq(models["mlp"], tmp_path, samples(SHAPES["mlp"]), recipe_for("int8"), INT8)
    proto = onnx.load(str(tmp_path / QDQ_ONNX))
    scale = next(i for i in proto.graph.initializer if i.name.endswith("_scale") and not i.dims)
    scale.CopyFrom(onnx.numpy_helper.from_array(np.array(1e-4, np.float32), scale.name))  # clips everything
    broken = tmp_path / "broken.onnx"
    onnx.save_model(proto, str(broken))
    assert compare_qdq(models["mlp"], broken, samples(SHAPES["mlp"], 4), INT8).breaches()


def test_qdq_fp8_is_per_tensor_float8(models: dict[str, Path], tmp_path: Path) -> None:
    report = prepare_qdq(models["mlp"], tmp_path, samples(SHAPES["mlp"]), recipe_for("fp8"), INT8)
    assert report["placement"]["problems"] == []
    proto = onnx.load(str(tmp_path / QDQ_ONNX))
    zero_points = [i for i in proto.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in zero_points)
    assert report["parity_vs_fp32"]["outputs"]["y"]["cosine"] >= 0.98


def test_qdq_recipe_takes_the_options_or_the_precision_defaults() -> None:
    assert recipe_for("int8") == QDQRecipe("int8", ("Conv", "MatMul", "Gemm"), "minmax")
    assert recipe_for("fp8").calibration_method == "distribution"
    recipe = recipe_for("int8", ["Conv"], "entropy")
    assert (recipe.op_types, recipe.calibration_method) == (("Conv",), "entropy")
    assert recipe.to_dict()["calibration_method"] == "entropy"


# --- 2:4 pattern -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_2of4_check_passes_pruned_weights(models: dict[str, Path], name: str) -> None:
    report = check_2of4(models[f"{name}24"])
    assert report.all_eligible_qualify
    assert len(report.qualifying) == (2 if name == "cnn" else 3)  # the CNN's first conv sees 3 channels
    if name == "cnn":  # 3 input channels: TensorRT cannot use 2:4 there, and the report says so
        first = report.layers[0]
        assert not first.eligible and "not a multiple of 4" in first.reason


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_2of4_check_fails_dense_weights(models: dict[str, Path], name: str) -> None:
    report = check_2of4(models[name])
    assert report.eligible and not report.qualifying and not report.all_eligible_qualify
    assert all(layer.dense_groups > 0 for layer in report.layers if layer.eligible)


def test_2of4_check_finds_one_broken_group_and_sees_through_qdq(models: dict[str, Path], tmp_path: Path) -> None:
    proto = onnx.load(str(models["mlp24"]))
    init = next(i for i in proto.graph.initializer if i.dims == [16, 32] or list(i.dims) == [16, 32])
    weight = onnx.numpy_helper.to_array(init).copy()
    weight[0:4, 0] = 1.0  # one group of four input channels made dense
    init.CopyFrom(onnx.numpy_helper.from_array(weight, init.name))
    report = check_2of4(proto)
    broken = next(layer for layer in report.layers if layer.weight == init.name)
    assert not broken.qualifies and broken.dense_groups == 1
    assert len(report.qualifying) == len(report.eligible) - 1
    prepare_qdq(models["mlp24"], tmp_path, samples(SHAPES["mlp"]), recipe_for("int8"), INT8)
    assert check_2of4(tmp_path / QDQ_ONNX).all_eligible_qualify  # symmetric int8 keeps zeros zero
