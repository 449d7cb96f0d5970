"""What the TensorRT tests share: tiny models built in code and exported to ONNX (the ``models``
fixture), calibration samples, a compile context as ``kiln build`` makes it, and the relative
working folder users build from. The tests are split by subject: ``test_tensorrt_onnx.py``
(profiles, Q/DQ, 2:4), ``test_tensorrt_plan.py`` (inspector JSON, prepare, plan, version gate),
``test_tensorrt_stand_in.py`` (runner and compile against a stand-in module) and
``test_tensorrt_engines.py`` (the CLI without TensorRT, real engines on a GPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from kiln.capture.exporters import ExportBundle
from kiln.config import DimSpec, InputSpec, TargetConfig, Tolerance
from kiln.spec import Signature
from kiln.targets import target_options, tolerance_for
from kiln.targets.base import CompileContext

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


def compile_context(
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


@pytest.fixture
def relative(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Work from ``tmp_path`` with relative paths, as ``kiln build --out build`` does."""
    monkeypatch.chdir(tmp_path)
    return Path(".")
