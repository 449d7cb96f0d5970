"""The TensorRT target: what runs without TensorRT here, and the engine tests for a GPU machine.

Runs everywhere: optimization-profile derivation, the Q/DQ ONNX and its checks (on a tiny CNN and
a tiny MLP built in code), the 2:4 pattern check, the parsing of the engine inspector's documented
JSON, and ``kiln build --target tensorrt:int8`` exiting 5 after writing the Q/DQ ONNX. The tests
marked ``gpu`` build and run real engines; nothing stands in for TensorRT.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kiln.config import DimSpec, InputSpec, TargetConfig, Tolerance
from kiln.errors import ConfigError, DataError, UnavailableError
from kiln.exporters import ExportBundle
from kiln.spec import Signature
from kiln.targets import availability, target_options, tolerance_for
from kiln.targets.base import CompileContext, RunOptions
from kiln.targets.tensorrt import PLAN, TARGET, read_plan
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
    model: Path, tmp_path: Path, target: TargetConfig, calibration: object = None, out: str | None = None
) -> CompileContext:
    """A context as ``kiln build`` makes it: ``<out>/<model>/export/`` and a fresh target folder."""
    export = tmp_path / "build" / "m" / "export"
    export.mkdir(parents=True, exist_ok=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    shape = ["batch", *SHAPES["cnn" if "cnn" in model.name else "mlp"]]
    bundle = ExportBundle(export, signature(shape, {"batch": (1, 4, 32)}), "python", opset=20)
    folder = export.parent / (out or target.key)
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
    assert plan.builder_flags == ("INT8",) and plan.workspace_bytes == 64 * 2**20 and plan.timing_cache is None
    assert json.loads((ctx.out_dir / "qdq.json").read_text())["recipe"]["calibration_method"] == "entropy"
    assert TARGET.prepares


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


# --- real engines: an NVIDIA GPU with TensorRT 10 ------------------------------------------------


def _build(ctx: CompileContext) -> tuple[object, object]:
    TARGET.prepare(ctx)
    artifact = TARGET.compile(ctx)
    return artifact, TARGET.load(artifact, RunOptions())


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.target("tensorrt", stage="run")
def test_engine_builds_runs_dynamic_shapes_and_records_layers(
    models: dict[str, Path], tmp_path: Path, precision: str
) -> None:
    from kiln.data import CalibrationSet

    calibration = CalibrationSet(samples(SHAPES["cnn"]), "digest", "test")
    ctx = _context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision=precision), calibration)
    artifact, runner = _build(ctx)
    with runner:  # type: ignore[attr-defined]
        for batch in (1, 7, 32):
            x = np.random.default_rng(batch).standard_normal((batch, *SHAPES["cnn"])).astype(np.float32)
            got, ref = runner.infer({"x": x})["y"], _reference(models["cnn"], x)  # type: ignore[attr-defined]
            cosine = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
            assert got.shape == ref.shape and cosine.min() > (0.9999 if precision == "fp32" else 0.98)
    info = artifact.info  # type: ignore[attr-defined]
    assert info.flags == [], info.flags
    assert info.layers["compute_precisions"].get({"fp32": "fp32", "fp16": "fp16", "int8": "int8"}[precision])
    assert (ctx.out_dir / "model.engine").stat().st_size > 0 and info.compute_capability


@pytest.mark.target("tensorrt", stage="run")
def test_engine_timing_cache_is_saved_and_reused(models: dict[str, Path], tmp_path: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16")
    first, _ = _build(_context(models["cnn"], tmp_path, target, out="first"))
    cache = Path(first.info.timing_cache["path"])  # type: ignore[attr-defined]
    assert cache == tmp_path / "build" / "m" / ".trt-timing.cache" and cache.stat().st_size > 0
    assert not first.info.timing_cache["reused"]  # type: ignore[attr-defined]
    second, _ = _build(_context(models["cnn"], tmp_path, target, out="second"))
    assert second.info.timing_cache["reused"]  # type: ignore[attr-defined]


@pytest.mark.target("tensorrt", stage="run")
def test_engine_2of4_records_sparse_tactics_or_flags_their_absence(models: dict[str, Path], tmp_path: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16", prune={"method": "2:4"})
    artifact, _ = _build(_context(models["cnn24"], tmp_path, target))
    info = artifact.info  # type: ignore[attr-defined]
    took = bool(info.layers["sparse_tactic_layers"] or info.sparse["builder_log"]["picked"])
    assert took != any("no sparse tactic" in flag for flag in info.flags)
