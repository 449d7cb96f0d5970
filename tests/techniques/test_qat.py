"""Quantization-aware training: ``[recovery] qat = true`` trains each quantized target on its own
quantizer with fake quantization in the loop; a target x precision without a QAT path is refused
at config time; PTQ's and QAT's metric sit side by side in the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import ConfigError
from kiln.pipeline.build import build, plan
from kiln.targets import REGISTRY
from tests.conftest import skip_unless, write_config
from tests.techniques.tasks import TASKS, config

RECOVERY = {"source": f"{TASKS}:train_batches", "qat": True, "epochs": 2, "lr": 0.001}


def _config(tmp: Path, targets: list[dict], source: str = f"{TASKS}:member_a", **recovery: object) -> Path:
    data = config("qat", source=source)
    return write_config(tmp, {**data, "recovery": {**RECOVERY, **recovery}, "target": targets})


def test_the_registry_names_a_qat_path_for_each_static_int8() -> None:
    paths = {f"{n}:{p.name}" for n, s in REGISTRY.items() for p in s.precisions if p.qat}
    assert paths == {"aoti:int8", "onnxruntime:int8", "openvino:int8", "tensorrt:int8", "executorch:int8"}


@pytest.mark.parametrize(
    "target",
    [{"name": "openvino", "precision": "int8-weights"}, {"name": "onnxruntime", "precision": "int8-dynamic"}],
)
def test_a_quantized_target_without_a_qat_path_is_refused_before_any_work(tmp_path: Path, target: dict) -> None:
    path = _config(tmp_path, [{"name": "onnxruntime", "precision": "int8"}, target])
    with pytest.raises(ConfigError, match=f"{target['name']}:{target['precision']} has no quantization-aware"):
        plan(load_config(path), tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_qat_with_nothing_to_quantize_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, [{"name": "onnxruntime"}, {"name": "openvino", "precision": "bf16"}])
    with pytest.raises(ConfigError, match="no target quantizes"):
        plan(load_config(path), tmp_path / "build")


def test_qat_is_in_the_quantized_targets_key_only(tmp_path: Path) -> None:
    targets = [{"name": "onnxruntime"}, {"name": "onnxruntime", "precision": "int8"}]
    on = plan(load_config(_config(tmp_path, targets)), tmp_path / "b").targets
    longer = plan(load_config(_config(tmp_path, targets, epochs=3)), tmp_path / "b").targets
    assert on["onnxruntime-fp32"].key == longer["onnxruntime-fp32"].key
    assert on["onnxruntime-int8"].key != longer["onnxruntime-int8"].key


def test_kiln_targets_shows_the_qat_column() -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    out = CliRunner().invoke(main, ["targets"], terminal_width=250).output
    assert "QAT" in out


@pytest.mark.slow
def test_onnxruntime_qat_is_a_qdq_onnx_with_ptq_beside_it(tmp_path: Path) -> None:
    skip_unless("onnxruntime", run=True)
    import onnx

    path = _config(tmp_path, [{"name": "eager"}, {"name": "onnxruntime", "precision": "int8"}])
    results = build(load_config(path), tmp_path / "build")
    assert all(r.status == "built" for r in results), [str(r.error) for r in results]
    manifest = results[1].manifest
    qat = manifest.qat
    assert qat is not None and "Q/DQ ONNX" in qat.path and qat.epochs == 2
    assert qat.ptq_metric is not None and qat.qat_metric is not None
    assert qat.distilled_from == "the float model"
    assert manifest.gate.passed, manifest.gate
    ops = {n.op_type for n in onnx.load(str(tmp_path / "build" / "qat" / "onnxruntime-int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert results[0].manifest.qat is None  # eager is not quantized


@pytest.mark.slow
@pytest.mark.parametrize(("target", "tool"), [("executorch", "XNNPACKQuantizer"), ("aoti", "X86InductorQuantizer")])
def test_pt2e_targets_train_on_their_own_quantizer(tmp_path: Path, target: str, tool: str) -> None:
    skip_unless(target, run=True)
    path = _config(tmp_path, [{"name": target, "precision": "int8"}], epochs=1)
    result = build(load_config(path), tmp_path / "build")[0]
    assert result.status == "built", result.error
    assert tool in result.manifest.qat.path and result.manifest.gate.passed
    assert "quantization-aware" in result.manifest.execution.quantization["tool"]


@pytest.mark.slow
def test_openvino_qat_goes_through_nncf(tmp_path: Path) -> None:
    skip_unless("openvino", run=True)
    path = _config(tmp_path, [{"name": "openvino", "precision": "int8"}], epochs=1)
    result = build(load_config(path), tmp_path / "build")[0]
    assert result.status == "built", result.error
    assert "NNCF" in result.manifest.qat.path and result.manifest.gate.passed
    assert result.manifest.execution.execution_precision.startswith("int8")


@pytest.mark.slow  # trains, then exports Q/DQ ONNX
def test_tensorrt_qat_prepares_a_symmetric_qdq_onnx_here(tmp_path: Path) -> None:
    """TensorRT needs a GPU to build; the Q/DQ ONNX its engine would be built from is made here."""
    pytest.importorskip("torchao")
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = _config(tmp_path, [{"name": "tensorrt", "precision": "int8"}], epochs=1)
    result = build(load_config(path), tmp_path / "build")[0]
    prepared = tmp_path / "build" / "qat" / "tensorrt-int8.prepared"
    if (tmp_path / "build" / "qat" / "tensorrt-int8").is_dir():  # a machine with TensorRT built it
        prepared = tmp_path / "build" / "qat" / "tensorrt-int8"
    assert (prepared / "qat.json").is_file(), result.error
    model = onnx.load(str(prepared / "model.qdq.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [
        init[n.input[2]]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in init
    ]
    assert zero_points and all(np.all(z == 0) for z in zero_points)
