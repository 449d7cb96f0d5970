"""Toolchains that print() to stdout stay off kiln's stdout, which pipelines read (``--verbose`` keeps it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.targets import base, quiet_toolchains
from kiln.targets.base import toolchain_prints


def test_prints_pass_through_until_kiln_quiets_the_toolchains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(base, "QUIET", False)
    with toolchain_prints():
        print("narration")
    assert capsys.readouterr().out == "narration\n"
    quiet_toolchains()
    assert base.QUIET  # monkeypatch puts False back afterwards
    with toolchain_prints():
        print("narration")
    print("kiln's own line")
    assert capsys.readouterr().out == "kiln's own line\n"


def _conv_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_onnxruntime_entropy_calibration_narrates_on_stdout_and_kiln_swallows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime (pip install 'kiln[onnxruntime]')")
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.samples = iter([{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    _conv_model(tmp_path / "conv.onnx")

    def quantize(name: str) -> str:
        with toolchain_prints():
            quantize_static(
                str(tmp_path / "conv.onnx"), str(tmp_path / name), Reader(), calibrate_method=CalibrationMethod.Entropy
            )
        return capsys.readouterr().out

    monkeypatch.setattr(base, "QUIET", False)
    assert "histogram" in quantize("verbose.onnx")  # the vendor's print(), which --verbose keeps
    monkeypatch.setattr(base, "QUIET", True)
    assert quantize("quiet.onnx") == ""
    assert (tmp_path / "quiet.onnx").is_file()
