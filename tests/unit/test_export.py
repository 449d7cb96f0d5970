"""Export failures name the stage and the operator; the opset written must be the one asked."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import helper

from kiln.capture.exporters.onnx import check_opset, written_opset
from kiln.capture.exporters.torch_export import describe_failure
from kiln.errors import ExportError
from kiln.tensors import flatten_outputs
from tests.conftest import write_config


def _proto(opset: int) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_check_opset_refuses_a_silently_different_opset() -> None:
    assert written_opset(_proto(18)) == 18
    check_opset(_proto(18), 18)
    with pytest.raises(ExportError, match="asked for opset 17 but the exporter wrote opset 18"):
        check_opset(_proto(18), 17)


def test_describe_failure_names_the_operator_and_a_hint() -> None:
    err = describe_failure(
        "ONNX export", RuntimeError("Unsupported FX nodes: {'aten::_fft_r2c.default'}\nmore"), "try X"
    )
    assert str(err) == (
        "ONNX export failed (operator aten::_fft_r2c.default): RuntimeError: "
        "Unsupported FX nodes: {'aten::_fft_r2c.default'}; try X"
    )


def test_flatten_outputs_names_nested_structures() -> None:
    import torch

    t = torch.zeros(1)
    assert flatten_outputs(t)[0] == ["output"]
    assert flatten_outputs((t, (t, t)))[0] == ["output_0", "output_1.0", "output_1.1"]
    assert flatten_outputs({"logits": t, "aux": {"a": t}})[0] == ["logits", "aux.a"]


def test_untraceable_model_fails_in_one_line_naming_the_stage(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    models = Path(__file__).parents[1] / "models.py"
    model = {
        "name": "dd",
        "source": f"{models}:data_dependent",
        "inputs": [{"name": "x", "shape": ["batch", 4]}],
        "dims": {"batch": {"min": 1, "max": 4}},
    }
    path = write_config(tmp_path, {"model": model, "target": [{"name": "onnxruntime"}]})
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 6, result.output  # the model cannot be captured: not a bug in kiln
    line = next(x for x in result.output.splitlines() if x.startswith("kiln: error:"))
    assert "torch.export failed" in line and "strict" in line and "--verbose" in line
    assert "Traceback" not in result.output
