"""The TensorRT target: what runs without TensorRT here, and the engine tests for a GPU machine.

Runs everywhere: optimization-profile derivation, the Q/DQ ONNX and its checks (on a tiny CNN and
a tiny MLP built in code), the 2:4 pattern check, the parsing of the engine inspector's documented
JSON, the plan (network typing, builder flags, absolute paths), the TensorRT version gate, the
runner's throughput path over a stand-in device, and ``kiln build --target tensorrt:int8`` exiting
5 after writing the Q/DQ ONNX. Where the real ``tensorrt`` cannot be imported, ``compile`` runs
against a stand-in module (:func:`stand_in_tensorrt`); where it can, those tests skip and the
tests marked ``gpu`` build and run real engines instead, from a relative ``--out`` as users run.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.targets.tensorrt as trt_target
from kiln.capture.exporters import ExportBundle
from kiln.config import DimSpec, InputSpec, TargetConfig, Tolerance
from kiln.errors import ConfigError, DataError, UnavailableError
from kiln.spec import Signature
from kiln.targets import availability, target_options, tolerance_for
from kiln.targets.base import CompileContext, RunOptions
from kiln.targets.tensorrt import PLAN, TARGET, engine_onnx, make_plan, read_plan, toolchain
from kiln.targets.tensorrt.inspection import engine_flags, sparsity_log, summarize, type_precision
from kiln.targets.tensorrt.profiles import derive_profiles, pick_profile, read_profiles, write_profiles
from kiln.targets.tensorrt.qdq import QDQ_ONNX, QDQRecipe, compare_qdq, prepare_qdq, qdq_placement, recipe_for
from kiln.targets.tensorrt.sparsity import check_2of4

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
nn = torch.nn

INT8 = Tolerance(min_cosine=0.98, min_top1=0.95)
NO_TENSORRT = "this machine can build TensorRT engines; the exit-5 path does not apply"


def signature(shape: list[int | str], dims: dict[str, tuple[int, int, int]]) -> Signature:
    return Signature(
        (InputSpec(name="x", shape=shape),),
        {name: DimSpec(min=lo, opt=opt, max=hi) for name, (lo, opt, hi) in dims.items()},
        ("y",),
    )


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def tiny_mlp() -> nn.Module:  # 3-D input: the exporter writes MatMul, not Gemm
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def prune_2of4(model: nn.Module) -> nn.Module:
    """2:4 magnitude pruning along input channels, on every layer whose input channels allow it."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear) and layer.weight.shape[1] % 4 == 0:
                w = layer.weight.movedim(1, -1)
                groups = w.reshape(*w.shape[:-1], -1, 4)
                keep = groups.abs().argsort(-1, descending=True)[..., :2]
                mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
                layer.weight.copy_((groups * mask).reshape(w.shape).movedim(-1, 1))
    return model


def export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=32)},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trt-models")
    cnn_x, mlp_x = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 16)
    return {
        "cnn": export(tiny_cnn(), cnn_x, folder / "cnn.onnx"),
        "mlp": export(tiny_mlp(), mlp_x, folder / "mlp.onnx"),
        "cnn24": export(prune_2of4(tiny_cnn()), cnn_x, folder / "cnn24.onnx"),
        "mlp24": export(prune_2of4(tiny_mlp()), mlp_x, folder / "mlp24.onnx"),
    }


def samples(shape: tuple[int, ...], count: int = 32, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, *shape)).astype(np.float32)} for _ in range(count)]


SHAPES = {"cnn": (3, 8, 8), "mlp": (4, 16)}


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


# --- the engine inspector's JSON (the documented schema; no engine involved) -----------------------

CASK_INT8_CONV = {
    "Name": "conv1 + relu1",
    "LayerType": "CaskConvolution",
    "Inputs": [
        {
            "Name": "x",
            "Dimensions": [16, 512, 28, 28],
            "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format.",
        }
    ],
    "Outputs": [
        {
            "Name": "y",
            "Dimensions": [16, 256, 28, 28],
            "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format.",
        }
    ],
    "ParameterType": "Convolution",
    "Weights": {"Type": "Int8", "Count": 131072},
    "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs",
}


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


def _context(
    model: Path, root: Path, target: TargetConfig, calibration: object = None, out: str | None = None
) -> CompileContext:
    """A context as ``kiln build --out <root>/build`` makes it: ``build/<model>/export/`` and a
    fresh temporary target folder ``build/<model>/.tmp-<key>-*`` (relative when ``root`` is)."""
    export = root / "build" / "m" / "export"
    export.mkdir(parents=True, exist_ok=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    shape = ["batch", *SHAPES["cnn" if "cnn" in model.name else "mlp"]]
    bundle = ExportBundle(export, signature(shape, {"batch": (1, 4, 32)}), "python", opset=20)
    folder = export.parent / (out or f".tmp-{target.key}-0a1b2c3d")
    folder.mkdir()
    return CompileContext(
        bundle,
        target,
        target_options(target),
        folder,
        tolerance_for(target),
        calibration,  # type: ignore[arg-type]
    )


def test_prepare_fp16_writes_profiles_and_plan(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = _context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    plan = json.loads((ctx.out_dir / PLAN).read_text())
    assert plan["builder_flags"] == ["FP16"] and plan["cleared_flags"] == []
    assert plan["timing_cache"] == str(tmp_path / "build" / "m" / ".trt-timing.cache")
    assert read_profiles(ctx.out_dir)[0].inputs[0].opt == (4, 3, 8, 8)


@pytest.mark.skipif(availability("tensorrt").build, reason=NO_TENSORRT)
def test_compile_without_tensorrt_says_what_to_install(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = _context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    assert read_plan(ctx.out_dir).builder_flags == ("FP16",)
    with pytest.raises(UnavailableError, match=r"pip install 'kiln\[tensorrt\]'"):
        TARGET.compile(ctx)


def test_prepare_refuses_int8_without_calibration(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = _context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="int8"))
    with pytest.raises(ConfigError, match="needs calibration data"):
        TARGET.prepare(ctx)


def test_prepare_int8_2of4_plans_sparse_int8(models: dict[str, Path], tmp_path: Path) -> None:
    from kiln.data import CalibrationSet

    target = TargetConfig(name="tensorrt", precision="int8", prune={"method": "2:4"})
    calibration = CalibrationSet(samples(SHAPES["cnn"]), "digest", "test")
    ctx = _context(models["cnn24"], tmp_path, target, calibration)
    TARGET.prepare(ctx)
    plan = json.loads((ctx.out_dir / PLAN).read_text())
    assert plan["builder_flags"] == ["INT8", "FP16", "SPARSE_WEIGHTS"] and plan["onnx"] == QDQ_ONNX
    assert json.loads((ctx.out_dir / "sparsity-2of4.json").read_text())["all_eligible_qualify"]
    assert (ctx.out_dir / QDQ_ONNX).is_file()


def test_prepare_rejects_fp32_2of4_and_unknown_options(models: dict[str, Path], tmp_path: Path) -> None:
    sparse_fp32 = TargetConfig(name="tensorrt", precision="fp32", options={"sparse_weights": True})
    with pytest.raises(ConfigError, match="need fp16 or int8"):
        TARGET.prepare(_context(models["cnn"], tmp_path / "a", sparse_fp32))
    typo = TargetConfig(name="tensorrt", precision="fp32", options={"workspace": 64})
    with pytest.raises(ConfigError, match="unknown key 'workspace'; did you mean 'workspace_mb'"):
        _context(models["cnn"], tmp_path / "b", typo)


def test_prepare_int8_uses_the_options_recipe_and_plan(models: dict[str, Path], tmp_path: Path) -> None:
    from kiln.data import CalibrationSet

    options = {"calibration_method": "entropy", "int8_fallback": "fp32", "workspace_mb": 64, "timing_cache": False}
    target = TargetConfig(name="tensorrt", precision="int8", options=options)
    ctx = _context(models["cnn"], tmp_path, target, CalibrationSet(samples(SHAPES["cnn"]), "digest", "test"))
    TARGET.prepare(ctx)
    plan = read_plan(ctx.out_dir)
    assert plan.strongly_typed and plan.builder_flags == ()  # fp32 fallback: the Q/DQ ONNX's own types
    assert plan.workspace_bytes == 64 * 2**20 and plan.timing_cache is None
    assert json.loads((ctx.out_dir / "qdq.json").read_text())["recipe"]["calibration_method"] == "entropy"
    assert TARGET.prepares


# --- the plan: network typing, builder flags, absolute paths ---------------------------------------


@pytest.fixture
def relative(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Work from ``tmp_path`` with relative paths, as ``kiln build --out build`` does."""
    monkeypatch.chdir(tmp_path)
    return Path(".")


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
    ctx = _context(models["mlp"], tmp_path, TargetConfig(name="tensorrt", precision=precision, options=options))
    plan = make_plan(ctx)
    assert (plan.strongly_typed, plan.builder_flags) == (typed, flags)
    assert plan.cleared_flags == (("TF32",) if precision == "fp32" else ())


def test_plan_paths_are_absolute_when_out_is_relative(models: dict[str, Path], relative: Path, tmp_path: Path) -> None:
    ctx = _context(models["cnn"], relative, TargetConfig(name="tensorrt", precision="fp16"))
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


# --- the runner's throughput path (a stand-in device: no GPU here) ---------------------------------


def test_infer_many_does_the_host_copies_infer_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRTRunner's own ``infer`` and ``infer_many`` over a stand-in device: ``infer_device``
    doubles a CPU tensor and records the run, ``stream`` is None (``torch.cuda.stream(None)`` does
    nothing), ``synchronize`` records the wait; the module's one host copy is wrapped to count."""
    from kiln.targets.tensorrt import runner as runner_module

    trace: list[str] = []

    class StandInDevice(runner_module.TensorRTRunner):
        def __init__(self) -> None:  # no engine, no CUDA: only what infer and infer_many read
            self.torch, self.stream, self.inputs, self.names = torch, None, ["x"], ("y",)

        def infer_device(self, tensors: dict[str, Any]) -> dict[str, Any]:
            trace.append("run")
            return {"y": tensors["x"] * 2}

        def synchronize(self) -> None:
            trace.append("sync")

    to_host = runner_module._to_host
    monkeypatch.setattr(runner_module, "_to_host", lambda t: trace.append("copy") or to_host(t))
    runner, batches = StandInDevice(), [{"x": np.full((2, 3), i, np.float32)} for i in range(3)]
    got = [runner.infer(b)["y"] for b in batches]
    assert trace == ["run", "copy", "sync"] * 3 and all(
        (g == 2 * b["x"]).all() for g, b in zip(got, batches, strict=True)
    )
    trace.clear()
    runner.infer_many(batches)
    assert trace == ["run", "copy"] * 3 + ["sync"]  # the same work per request, one wait


# --- compile against a stand-in tensorrt module (where the real one cannot be imported) ------------


def real_tensorrt_imports() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


STAND_IN_GPU = {"gpu": "stand-in GPU", "compute_capability": "9.0", "sm": (9, 0)}


def stand_in_tensorrt(version: str) -> types.ModuleType:
    """A stand-in for ``tensorrt``, used only where the real module cannot be imported: the
    attributes kiln's compile reads, recording what it was asked (``parsed``, ``network_flags``,
    ``configs``, ``loggers``). Like TensorRT it keeps the first logger it is given and sends every
    later builder's messages there; each build logs one sparsity line naming its build number, and
    its engine holds one INT8 convolution. From 11 it lacks the weak-typing builder flags, as
    TensorRT 11 does."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.parsed, trt.network_flags, trt.configs, trt.loggers = [], [], [], []
    ns = types.SimpleNamespace

    class ILogger:
        Severity = ns(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    def given(logger: Any) -> None:
        trt.loggers.append(logger)

    class Network:
        def __init__(self, flags: int) -> None:
            self.names: list[str] = []
            trt.network_flags.append(flags)

        @property
        def num_inputs(self) -> int:
            return len(self.names)

        def get_input(self, i: int) -> Any:
            return ns(name=self.names[i])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network
            given(logger)

        def parse_from_file(self, path: str) -> bool:
            trt.parsed.append(path)
            if not Path(path).is_file():
                self.num_errors = 1
                return False
            self.network.names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
            return True

        def get_error(self, i: int) -> str:
            return "no such file"

    class Config:
        profiling_verbosity = builder_optimization_level = None

        def __init__(self) -> None:
            self.flags: set[str] = {"TF32"}  # TensorRT's default
            trt.configs.append(self)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            pass

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: Any) -> None:
            pass

        def create_timing_cache(self, data: bytes) -> Any:
            return ns(serialize=lambda: b"timing cache")

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> Any:
            return self.create_timing_cache(b"")

    class Builder:
        def __init__(self, logger: Any) -> None:
            given(logger)

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Any:
            return ns(set_shape=lambda *shapes: None)

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            kept = trt.loggers[0]  # TensorRT's first logger, whichever this builder was given
            kept.log(ILogger.Severity.INFO, f"(Sparsity) Layers eligible for sparse math: build{len(trt.configs)}")
            return b"engine"

    class Runtime:
        def __init__(self, logger: Any) -> None:
            given(logger)

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            inspector = ns(
                execution_context=None, get_engine_information=lambda fmt: json.dumps({"Layers": [CASK_INT8_CONV]})
            )
            context = ns(set_input_shape=lambda name, shape: True)
            return ns(create_execution_context=lambda: context, create_engine_inspector=lambda: inspector)

    weak = () if int(version.split(".")[0]) >= 11 else ("FP16", "BF16", "INT8", "FP8")
    trt.BuilderFlag = ns(**{flag: flag for flag in ("TF32", "SPARSE_WEIGHTS", *weak)})
    trt.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=1)
    trt.MemoryPoolType, trt.ProfilingVerbosity = ns(WORKSPACE="WORKSPACE"), ns(DETAILED="DETAILED")
    trt.LayerInformationFormat = ns(JSON="JSON")
    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[..., types.ModuleType]:
    """Installs :func:`stand_in_tensorrt` as ``tensorrt`` (and a stand-in GPU), as in a fresh process."""
    if real_tensorrt_imports():
        pytest.skip("the real TensorRT imports here: the gpu tests build real engines instead of the stand-in")

    def install(version: str = "10.13.3.9") -> types.ModuleType:
        trt = stand_in_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(toolchain, "_LOGGER", None)
        monkeypatch.setattr(trt_target, "cuda_device", lambda: STAND_IN_GPU)
        return trt

    return install


def test_compile_parses_the_export_onnx_when_out_is_relative(
    models: dict[str, Path], relative: Path, tmp_path: Path, stand_in: Callable[..., types.ModuleType]
) -> None:
    trt = stand_in()
    ctx = _context(models["cnn"], relative, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    artifact = TARGET.compile(ctx)
    assert trt.parsed == [str(tmp_path / "build" / "m" / "export" / "model.onnx")]
    assert (ctx.out_dir / "model.engine").read_bytes() == b"engine"
    assert (tmp_path / "build" / "m" / ".trt-timing.cache").read_bytes() == b"timing cache"
    assert artifact.info.timing_cache["path"] == str(tmp_path / "build" / "m" / ".trt-timing.cache")


def test_compile_refuses_tensorrt_11_with_exit_5_not_an_attribute_error(
    models: dict[str, Path], tmp_path: Path, stand_in: Callable[..., types.ModuleType]
) -> None:
    trt = stand_in("11.0.0.7")
    ctx = _context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
    TARGET.prepare(ctx)
    with pytest.raises(UnavailableError, match=r"TensorRT 11\.0\.0\.7 is installed .* 10\.x only") as caught:
        TARGET.compile(ctx)
    assert caught.value.exit_code == 5 and trt.parsed == []


@pytest.mark.parametrize("version", ["10.0.1.6", "10.13.3.9"])  # BuilderFlag.FP8 selected FP8 kernels only in 10.0
def test_compile_builds_qdq_strongly_typed_and_the_rest_with_precision_flags(
    models: dict[str, Path], tmp_path: Path, stand_in: Callable[..., types.ModuleType], version: str
) -> None:
    from kiln.data import CalibrationSet

    trt = stand_in(version)
    calibration = CalibrationSet(samples(SHAPES["mlp"]), "digest", "test")
    fp8 = _context(models["mlp"], tmp_path / "a", TargetConfig(name="tensorrt", precision="fp8"), calibration)
    fp16 = _context(models["mlp"], tmp_path / "b", TargetConfig(name="tensorrt", precision="fp16"))
    built = {}
    for ctx in (fp8, fp16):
        TARGET.prepare(ctx)
        built[ctx.precision] = TARGET.compile(ctx)
    assert trt.network_flags == [1 << 1, 0]  # 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert trt.configs[0].flags == {"TF32"} and trt.configs[1].flags == {"TF32", "FP16"}
    assert built["fp8"].info.strongly_typed and not built["fp16"].info.strongly_typed
    assert trt.parsed[0] == str(fp8.out_dir / QDQ_ONNX)
    # The stand-in's engine holds one INT8 convolution: the inspector check still flags fp8.
    assert any("fp8 engine has no FP8" in flag for flag in built["fp8"].info.flags)


def test_two_builds_share_one_logger_and_each_keeps_its_own_messages(
    models: dict[str, Path], tmp_path: Path, stand_in: Callable[..., types.ModuleType]
) -> None:
    trt = stand_in()
    target = TargetConfig(name="tensorrt", precision="fp16")
    artifacts = []
    for out in ("first", "second"):
        ctx = _context(models["cnn"], tmp_path, target, out=out)
        TARGET.prepare(ctx)
        artifacts.append(TARGET.compile(ctx))
    assert len(trt.loggers) == 6 and all(logger is toolchain.trt_logger(trt) for logger in trt.loggers)
    logs = [a.info.sparse["builder_log"]["eligible"] for a in artifacts]
    assert logs == [["build1"], ["build2"]]  # the second build heard, and nothing of the first
    assert toolchain.trt_logger(trt).messages is None  # nothing kept between builds


# --- the CLI on a machine without TensorRT ------------------------------------------------------

MODEL_PY = """
import numpy as np
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()


def calibration():
    rng = np.random.default_rng(0)
    for _ in range(24):
        yield {"x": rng.standard_normal((1, 1, 6, 6)).astype(np.float32)}
"""

KILN_TOML = """
[model]
name = "tiny"
source = "model.py:build"
inputs = [{ name = "x", shape = ["batch", 1, 6, 6] }]
dims = { batch = { min = 1, opt = 2, max = 8 } }

[calibration]
source = "model.py:calibration"
samples = 24
"""


@pytest.mark.skipif(availability("tensorrt").build, reason=NO_TENSORRT)
def test_cli_build_int8_exits_5_after_writing_the_qdq_onnx(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (tmp_path / "kiln.toml").write_text(KILN_TOML)
    out = tmp_path / "build"
    result = CliRunner().invoke(
        main, ["build", str(tmp_path / "kiln.toml"), "--target", "tensorrt:int8", "--out", str(out)]
    )
    assert result.exit_code == 5, result.output
    assert "pip install 'kiln[tensorrt]'" in result.output
    prepared = out / "tiny" / "tensorrt-int8.prepared"
    assert {QDQ_ONNX, "qdq.json", "profiles.json", PLAN} <= {p.name for p in prepared.iterdir()}
    assert json.loads((prepared / "qdq.json").read_text())["placement"]["problems"] == []
    assert not (out / "tiny" / "tensorrt-int8").exists()  # no artifact that looks built


def test_cli_targets_explains_tensorrt_absence() -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    result = CliRunner().invoke(main, ["targets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "tensorrt" in line and "fp8" in line)
    avail = availability("tensorrt")
    if not avail.build:
        assert "kiln[tensorrt]" in avail.reason or "NVIDIA GPU" in avail.reason
        assert avail.reason.split(" and ")[0][:40] in row


# --- real engines: an NVIDIA GPU with TensorRT 10, built from a relative --out -------------------


def _build(ctx: CompileContext) -> tuple[Any, Any]:
    TARGET.prepare(ctx)
    artifact = TARGET.compile(ctx)
    return artifact, TARGET.load(artifact, RunOptions())


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _cosine(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    return float(((got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)).min())


@pytest.mark.parametrize(
    ("precision", "options"), [("fp32", {}), ("fp16", {}), ("int8", {}), ("int8", {"int8_fallback": "fp32"})]
)
@pytest.mark.target("tensorrt", stage="run")
def test_engine_builds_runs_dynamic_shapes_and_records_layers(
    models: dict[str, Path], relative: Path, precision: str, options: dict[str, object]
) -> None:
    from kiln.data import CalibrationSet

    calibration = CalibrationSet(samples(SHAPES["cnn"]), "digest", "test")
    target = TargetConfig(name="tensorrt", precision=precision, options=options)
    ctx = _context(models["cnn"], relative, target, calibration)
    artifact, runner = _build(ctx)
    floor = 0.9999 if precision == "fp32" else 0.98
    batches = [
        {"x": np.random.default_rng(b).standard_normal((b, *SHAPES["cnn"])).astype(np.float32)} for b in (1, 7, 32)
    ]
    with runner:
        for inputs in batches:
            got, ref = runner.infer(inputs)["y"], _reference(models["cnn"], inputs["x"])
            assert got.shape == ref.shape and _cosine(got, ref) > floor
        runner.infer_many(batches)  # the throughput path: the same runs and host copies, one wait
        assert _cosine(runner.infer(batches[1])["y"], _reference(models["cnn"], batches[1]["x"])) > floor
    info = artifact.info
    assert info.flags == [], info.flags
    assert info.strongly_typed == (options.get("int8_fallback") == "fp32")
    assert info.layers["compute_precisions"].get(precision)
    assert (ctx.out_dir / "model.engine").stat().st_size > 0 and info.compute_capability


@pytest.mark.target("tensorrt", stage="run")
def test_engine_fp8_is_strongly_typed_and_its_matmuls_run_fp8(models: dict[str, Path], relative: Path) -> None:
    from kiln.data import CalibrationSet

    if torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip(f"fp8 needs compute capability 8.9 or later; {torch.cuda.get_device_name(0)} has less")
    calibration = CalibrationSet(samples(SHAPES["mlp"]), "digest", "test")
    ctx = _context(models["mlp"], relative, TargetConfig(name="tensorrt", precision="fp8"), calibration)
    artifact, runner = _build(ctx)
    x = np.random.default_rng(3).standard_normal((8, *SHAPES["mlp"])).astype(np.float32)
    with runner:
        assert _cosine(runner.infer({"x": x})["y"], _reference(models["mlp"], x)) > 0.98
    info = artifact.info
    assert info.strongly_typed and info.builder_flags == []
    # FP8 compute layers, or (a fused Myelin graph hides its kernels) the flag that says so.
    assert info.layers["compute_precisions"].get("fp8") or (info.flags and info.layers["opaque_layers"]), info.layers


@pytest.mark.target("tensorrt", stage="run")
def test_engine_builds_share_one_logger_and_the_second_is_heard(
    models: dict[str, Path], relative: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorrt as trt

    given: list[Any] = []
    heard: list[list[str]] = []
    builder, sparsity = trt.Builder, trt_target.sparsity_log
    monkeypatch.setattr(trt, "Builder", lambda logger: given.append(logger) or builder(logger))
    monkeypatch.setattr(trt_target, "sparsity_log", lambda messages: heard.append(list(messages)) or sparsity(messages))
    target = TargetConfig(name="tensorrt", precision="fp16")
    for out in ("first", "second"):
        ctx = _context(models["cnn"], relative, target, out=out)
        TARGET.prepare(ctx)
        TARGET.compile(ctx)
    assert len(given) == 2 and given[0] is given[1] is toolchain.trt_logger(trt)
    assert heard[0] and heard[1], "a build's TensorRT log came back empty"


@pytest.mark.target("tensorrt", stage="run")
def test_engine_timing_cache_is_saved_and_reused(models: dict[str, Path], relative: Path, tmp_path: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16")
    first, _ = _build(_context(models["cnn"], relative, target, out="first"))
    cache = Path(first.info.timing_cache["path"])
    assert cache == tmp_path / "build" / "m" / ".trt-timing.cache" and cache.stat().st_size > 0
    assert not first.info.timing_cache["reused"]
    second, _ = _build(_context(models["cnn"], relative, target, out="second"))
    assert second.info.timing_cache["reused"]


@pytest.mark.target("tensorrt", stage="run")
def test_engine_2of4_records_sparse_tactics_or_flags_their_absence(models: dict[str, Path], relative: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16", prune={"method": "2:4"})
    artifact, _ = _build(_context(models["cnn24"], relative, target))
    info = artifact.info
    took = bool(info.layers["sparse_tactic_layers"] or info.sparse["builder_log"]["picked"])
    assert took != any("no sparse tactic" in flag for flag in info.flags)


@pytest.mark.target("tensorrt", stage="run")
def test_cli_engine_build_fp16_with_a_relative_out_passes_the_gate(relative: Path) -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    (relative / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (relative / "kiln.toml").write_text(KILN_TOML)
    result = CliRunner().invoke(main, ["build", "kiln.toml", "--target", "tensorrt:fp16", "--out", "build"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path("build/tiny/tensorrt-fp16/manifest.json").read_text())
    assert manifest["gate"]["passed"] and Path(manifest["execution"]["timing_cache"]["path"]).is_absolute()
