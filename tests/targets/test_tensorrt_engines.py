"""``kiln build --target tensorrt:int8`` exiting 5 after writing the Q/DQ ONNX where TensorRT is
absent, ``kiln targets`` saying why, and on an NVIDIA GPU with TensorRT 10, real engines built and
run from a relative ``--out``, as users run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.targets.tensorrt as trt_target
from kiln.config import TargetConfig
from kiln.targets import availability
from kiln.targets.base import CompileContext, RunOptions
from kiln.targets.tensorrt import PLAN, TARGET, toolchain
from kiln.targets.tensorrt.qdq import QDQ_ONNX
from tests.targets import tensorrt_helpers
from tests.targets.tensorrt_helpers import (
    NO_TENSORRT,
    SHAPES,
    compile_context,
    samples,
    torch,
)

models = tensorrt_helpers.models  # the shared fixture
relative = tensorrt_helpers.relative  # the shared fixture

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
    ctx = compile_context(models["cnn"], relative, target, calibration)
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
    ctx = compile_context(models["mlp"], relative, TargetConfig(name="tensorrt", precision="fp8"), calibration)
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
        ctx = compile_context(models["cnn"], relative, target, out=out)
        TARGET.prepare(ctx)
        TARGET.compile(ctx)
    assert len(given) == 2 and given[0] is given[1] is toolchain.trt_logger(trt)
    assert heard[0] and heard[1], "a build's TensorRT log came back empty"


@pytest.mark.target("tensorrt", stage="run")
def test_engine_timing_cache_is_saved_and_reused(models: dict[str, Path], relative: Path, tmp_path: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16")
    first, _ = _build(compile_context(models["cnn"], relative, target, out="first"))
    cache = Path(first.info.timing_cache["path"])
    assert cache == tmp_path / "build" / "m" / ".trt-timing.cache" and cache.stat().st_size > 0
    assert not first.info.timing_cache["reused"]
    second, _ = _build(compile_context(models["cnn"], relative, target, out="second"))
    assert second.info.timing_cache["reused"]


@pytest.mark.target("tensorrt", stage="run")
def test_engine_2of4_records_sparse_tactics_or_flags_their_absence(models: dict[str, Path], relative: Path) -> None:
    target = TargetConfig(name="tensorrt", precision="fp16", prune={"method": "2:4"})
    artifact, _ = _build(compile_context(models["cnn24"], relative, target))
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
