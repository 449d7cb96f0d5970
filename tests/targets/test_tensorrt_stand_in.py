"""The TensorRT runner's throughput path over a stand-in device, and ``compile`` against a
stand-in ``tensorrt`` module (:func:`stand_in_tensorrt`) where the real one cannot be imported;
where it can, these skip and the ``gpu`` tests in test_tensorrt_engines.py build real engines."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln.targets.tensorrt as trt_target
from kiln.config import TargetConfig
from kiln.errors import UnavailableError
from kiln.targets.tensorrt import TARGET, toolchain
from kiln.targets.tensorrt.qdq import QDQ_ONNX
from tests.targets import tensorrt_helpers
from tests.targets.tensorrt_helpers import (
    CASK_INT8_CONV,
    SHAPES,
    compile_context,
    onnx,
    samples,
    torch,
)

models = tensorrt_helpers.models  # the shared fixture
relative = tensorrt_helpers.relative  # the shared fixture

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
    ctx = compile_context(models["cnn"], relative, TargetConfig(name="tensorrt", precision="fp16"))
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
    ctx = compile_context(models["cnn"], tmp_path, TargetConfig(name="tensorrt", precision="fp16"))
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
    fp8 = compile_context(models["mlp"], tmp_path / "a", TargetConfig(name="tensorrt", precision="fp8"), calibration)
    fp16 = compile_context(models["mlp"], tmp_path / "b", TargetConfig(name="tensorrt", precision="fp16"))
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
        ctx = compile_context(models["cnn"], tmp_path, target, out=out)
        TARGET.prepare(ctx)
        artifacts.append(TARGET.compile(ctx))
    assert len(trt.loggers) == 6 and all(logger is toolchain.trt_logger(trt) for logger in trt.loggers)
    logs = [a.info.sparse["builder_log"]["eligible"] for a in artifacts]
    assert logs == [["build1"], ["build2"]]  # the second build heard, and nothing of the first
    assert toolchain.trt_logger(trt).messages is None  # nothing kept between builds
