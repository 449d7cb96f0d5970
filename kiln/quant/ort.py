"""ONNX Runtime's calibration plumbing, shared by the targets whose quantizer it is: the ONNX
Runtime target's static int8 and TensorRT's explicit-quantization (Q/DQ) ONNX.

Toolchain: onnxruntime 1.31 (``onnxruntime.quantization``), imported inside the functions.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any


def preprocess(src: Path, dest: Path) -> None:
    """``quant_pre_process``: shape inference and ONNX optimizations, as the quantizers expect."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ORT's symbolic shape inference fills in shapes the quantizers rely on (without it, dynamic
    # quantization of a small Gemm head fails onnx shape inference); it cannot read every graph,
    # and then the plain onnx shape inference is the fallback.
    src, dest = src.resolve(), dest.resolve()
    # When it gives up, ORT's symbolic inference dumps `sym_shape_infer_temp.onnx` (+ external
    # data) into the working directory: keep that debris in a folder of our own.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=False)
        except Exception:  # symbolic inference gave up: retry without it
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=True)


class SampleReader:
    """``CalibrationDataReader``: hands kiln's checked samples to ORT's calibrator, one by one."""

    def __init__(self, samples: list[dict[str, Any]], names: set[str]) -> None:
        self._items = iter([{k: v for k, v in s.items() if k in names} for s in samples])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)
