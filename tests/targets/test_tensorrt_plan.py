"""The TensorRT target without TensorRT: the parsing of the engine inspector's documented JSON,
the prepare step, the plan (network typing, builder flags, absolute paths) and the version gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kiln.targets.tensorrt as trt_target
from kiln.config import TargetConfig
from kiln.errors import ConfigError, UnavailableError
from kiln.targets import availability
from kiln.targets.tensorrt import PLAN, TARGET, engine_onnx, make_plan, read_plan, toolchain
from kiln.targets.tensorrt.inspection import engine_flags, sparsity_log, summarize, type_precision
from kiln.targets.tensorrt.profiles import read_profiles
from kiln.targets.tensorrt.qdq import QDQ_ONNX
from tests.targets import tensorrt_helpers
from tests.targets.tensorrt_helpers import (
    CASK_INT8_CONV,
    NO_TENSORRT,
    SHAPES,
    compile_context,
    samples,
)

models = tensorrt_helpers.models  # the shared fixture
relative = tensorrt_helpers.relative  # the shared fixture

# --- the engine inspector's JSON (the documented schema; no engine involved) -----------------------


def _layer(name: str, fmt: str, weights: str | None = None, tactic: str = "") -> dict[str, object]:
    layer: dict[str, object] = {
        "Name": name,
        "LayerType": "CaskConvolution" if weights else "Reformat",
        "ParameterType": "Convolution" if weights else "Reformat",
        "Inputs": [{"Name": f"{name}_in", "Dimensions": [1, 8, 8, 8], "Format/Datatype": fmt}],
        "Outputs": [{"Name": f"{name}_out", "Dimensions": [1, 8, 8, 8], "Format/Datatype": fmt}],
        "TacticName": tactic,
    }
    if weights:
        layer["Weights"] = {"Type": weights, "Count": 64}
    return layer


def test_inspector_summary_counts_precisions_and_finds_int8() -> None:
    engine = {
        "Layers": [
            CASK_INT8_CONV,
            _layer("quantize x", "Row major linear FP32"),
            _layer("conv2", "Channel major FP16 format where channel % 8 == 0", "Half"),
            "{ForeignNode[/fc...y]}",
            {
                "Name": "{ForeignNode[/attn...]}",
                "LayerType": "Myelin",
                "Inputs": [{"Name": "h", "Format/Datatype": "Half"}],
            },
        ],
        "Bindings": ["x", "y"],
    }
    summary = summarize(json.dumps(engine))
    assert summary.precisions == {"int8": 1, "fp32": 1, "fp16": 2}
    assert summary.compute_precisions == {"int8": 1, "fp16": 1}
    assert summary.opaque == ["{ForeignNode[/fc...y]}", "{ForeignNode[/attn...]}"]
    assert engine_flags("int8", summary, False, {"eligible": [], "picked": []}) == []


def test_inspector_flags_int8_engine_without_int8_and_2of4_without_sparse_tactic() -> None:
    dense = summarize(
        json.dumps({"Layers": [_layer("conv", "Row major linear FP16 format", "Half", "sm80_hmma_fprop")]})
    )
    log = sparsity_log(
        [
            "(Sparsity) Layers eligible for sparse math: conv1, conv2, conv3",
            "(Sparsity) TRT inference plan picked sparse implementation for layers: ",
        ]
    )
    assert log == {"eligible": ["conv1", "conv2", "conv3"], "picked": []}
    flags = engine_flags("int8", dense, True, log, ["conv1"])
    assert any("int8 engine has no INT8" in f for f in flags)
    assert any("chose no sparse tactic (eligible: conv1, conv2, conv3)" in f for f in flags)
    sparse = summarize(
        json.dumps({"Layers": [_layer("conv", "Row major linear FP16 format", "Half", "sm80_sparse_hmma")]})
    )
    assert sparse.sparse_tactics == ["conv"]
    assert engine_flags("fp16", sparse, True, {"eligible": [], "picked": []}, ["conv"]) == []
    assert type_precision("Channel major BFloat16 format where channel % 8 == 0") == "bf16"
    assert type_precision("Row major linear UInt8 format") == "uint8"


# --- the target's prepare step ------------------------------------------------------------------


def test_prepare_fp16_writes_profiles_and_plan(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = compile_context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    plan = json.loads((ctx.out_dir / PLAN).read_text())
    assert plan["builder_flags"] == ["FP16"] and plan["cleared_flags"] == []
    assert plan["timing_cache"] == str(tmp_path / "build" / "m" / ".trt-timing.cache")
    assert read_profiles(ctx.out_dir)[0].inputs[0].opt == (4, 3, 8, 8)


@pytest.mark.skipif(availability("tensorrt").build, reason=NO_TENSORRT)
def test_compile_without_tensorrt_says_what_to_install(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = compile_context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    assert read_plan(ctx.out_dir).builder_flags == ("FP16",)
    with pytest.raises(UnavailableError, match=r"pip install 'kiln\[tensorrt\]'"):
        TARGET.compile(ctx)


def test_prepare_refuses_int8_without_calibration(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = compile_context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="int8"))
    with pytest.raises(ConfigError, match="needs calibration data"):
        TARGET.prepare(ctx)


def test_prepare_int8_2of4_plans_sparse_int8(models: dict[str, Path], tmp_path: Path) -> None:
    from kiln.data import CalibrationSet

    target = TargetConfig(name="tensorrt", precision="int8", prune={"method": "2:4"})
    calibration = CalibrationSet(samples(SHAPES["cnn"]), "digest", "test")
    ctx = compile_context(models["cnn24"], tmp_path, target, calibration)
    TARGET.prepare(ctx)
    plan = json.loads((ctx.out_dir / PLAN).read_text())
    assert plan["builder_flags"] == ["INT8", "FP16", "SPARSE_WEIGHTS"] and plan["onnx"] == QDQ_ONNX
    assert json.loads((ctx.out_dir / "sparsity-2of4.json").read_text())["all_eligible_qualify"]
    assert (ctx.out_dir / QDQ_ONNX).is_file()


def test_prepare_rejects_fp32_2of4_and_unknown_options(models: dict[str, Path], tmp_path: Path) -> None:
    sparse_fp32 = TargetConfig(name="tensorrt", precision="fp32", options={"sparse_weights": True})
    with pytest.raises(ConfigError, match="need fp16 or int8"):
        TARGET.prepare(compile_context(models["cnn"], tmp_path / "a", sparse_fp32))
    typo = TargetConfig(name="tensorrt", precision="fp32", options={"workspace": 64})
    with pytest.raises(ConfigError, match="unknown key 'workspace'; did you mean 'workspace_mb'"):
        compile_context(models["cnn"], tmp_path / "b", typo)


def test_prepare_int8_uses_the_options_recipe_and_plan(models: dict[str, Path], tmp_path: Path) -> None:
    from kiln.data import CalibrationSet

    options = {"calibration_method": "entropy", "int8_fallback": "fp32", "workspace_mb": 64, "timing_cache": False}
    target = TargetConfig(name="tensorrt", precision="int8", options=options)
    ctx = compile_context(models["cnn"], tmp_path, target, CalibrationSet(samples(SHAPES["cnn"]), "digest", "test"))
    TARGET.prepare(ctx)
    plan = read_plan(ctx.out_dir)
    assert plan.strongly_typed and plan.builder_flags == ()  # fp32 fallback: the Q/DQ ONNX's own types
    assert plan.workspace_bytes == 64 * 2**20 and plan.timing_cache is None
    assert json.loads((ctx.out_dir / "qdq.json").read_text())["recipe"]["calibration_method"] == "entropy"
    assert TARGET.prepares


# --- the plan: network typing, builder flags, absolute paths ---------------------------------------


@pytest.mark.parametrize(
    ("precision", "options", "typed", "flags"),
    [
        ("fp32", {}, False, ()),
        ("fp16", {}, False, ("FP16",)),
        ("bf16", {}, False, ("BF16",)),
        ("int8", {}, False, ("INT8", "FP16")),  # fp16 fallback: only weak typing runs fp32 ONNX layers fp16
        ("int8", {"int8_fallback": "fp32"}, True, ()),
        ("fp8", {}, True, ()),
        ("fp8", {"sparse_weights": True}, True, ("SPARSE_WEIGHTS",)),
    ],
)
def test_plan_types_qdq_networks_strongly_and_sets_no_precision_flag_there(
    models: dict[str, Path], tmp_path: Path, precision: str, options: dict[str, object], typed: bool, flags: tuple
) -> None:
    ctx = compile_context(models["mlp"], tmp_path, TargetConfig(name="tensorrt", precision=precision, options=options))
    plan = make_plan(ctx)
    assert (plan.strongly_typed, plan.builder_flags) == (typed, flags)
    assert plan.cleared_flags == (("TF32",) if precision == "fp32" else ())


def test_plan_paths_are_absolute_when_out_is_relative(models: dict[str, Path], relative: Path, tmp_path: Path) -> None:
    ctx = compile_context(models["cnn"], relative, TargetConfig(name="tensorrt", precision="fp16"))
    assert not ctx.out_dir.is_absolute() and not ctx.export.path.is_absolute()
    TARGET.prepare(ctx)
    plan = read_plan(ctx.out_dir)
    export_onnx = tmp_path / "build" / "m" / "export" / "model.onnx"
    assert plan.onnx == str(export_onnx) and plan.timing_cache == str(tmp_path / "build" / "m" / ".trt-timing.cache")
    assert engine_onnx(plan, ctx.out_dir) == export_onnx  # what compile hands the parser


def test_engine_onnx_refuses_a_relative_path_outside_the_folder(tmp_path: Path) -> None:
    from kiln.errors import TargetBuildError

    plan = trt_target.EnginePlan("fp16", "build/m/export/model.onnx", ("FP16",), (), 2**20, False, None, None)
    with pytest.raises(TargetBuildError, match="neither a file of its folder nor absolute"):
        engine_onnx(plan, tmp_path)
    with pytest.raises(TargetBuildError, match=r"is missing: .*model\.qdq\.onnx; rebuild"):
        engine_onnx(trt_target.EnginePlan("int8", QDQ_ONNX, (), (), 2**20, False, None, None, True), tmp_path)


@pytest.mark.parametrize("version", ["10.0.1.6", "10.13.3.9", "10.16.0.72"])
def test_version_gate_accepts_tensorrt_10(version: str) -> None:
    toolchain.check_version(version)


@pytest.mark.parametrize("version", ["11.0.0.7", "11.4.1", "9.3.0.1", "8.6.1", "dev"])
def test_version_gate_refuses_others_in_one_line_with_exit_5(version: str) -> None:
    with pytest.raises(UnavailableError) as caught:
        toolchain.check_version(version)
    message = str(caught.value)
    assert caught.value.exit_code == 5 and "\n" not in message
    assert (
        f"TensorRT {version} is installed" in message
        and "supports TensorRT 10.x only" in message
        and ">=10,<11" in message
    )
    assert "pip install 'kiln[tensorrt]' -c constraints.txt" in message


def test_inspector_flags_fp8_engine_without_fp8_compute_layers() -> None:
    fp8 = summarize(json.dumps({"Layers": [_layer("gemm", "Row major linear FP8 format", "FP8")]}))
    assert fp8.compute_precisions == {"fp8": 1} and engine_flags("fp8", fp8, False, sparsity_log([])) == []
    half = summarize(json.dumps({"Layers": [_layer("gemm", "Row major linear FP16 format", "Half")]}))
    assert any("fp8 engine has no FP8" in f for f in engine_flags("fp8", half, False, sparsity_log([])))
