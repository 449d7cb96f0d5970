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
    """``CalibrationDataReader``: hands kiln's checked samples to ORT's calibrator, one by one, or
    one range at a time (``set_range``) when the calibration runs in chunks (:func:`chunk_size`)."""

    def __init__(self, samples: list[dict[str, Any]], names: set[str]) -> None:
        self._samples = [{k: v for k, v in s.items() if k in names} for s in samples]
        self._items = iter(self._samples)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)

    def __len__(self) -> int:
        return len(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """The samples ``[start_index, end_index)`` are what ``get_next`` hands out next."""
        self._items = iter(self._samples[start_index:end_index])


CHUNK = 32  # calibration samples per pass unless a target's options say otherwise


def chunk_size(samples: int, limit: int = CHUNK) -> int | None:
    """The samples ORT's calibrator takes per pass (its ``CalibStridedMinMax`` stride), or ``None``
    for one pass over all of them. The calibrator keeps every intermediate tensor of a pass until
    the pass ends, so its memory grows with the samples (ResNet-50's entropy calibration on 300
    images ran out of 24 GiB); in chunks it merges each pass's ranges or histograms and frees the
    tensors. ORT wants the count divisible by the stride: the largest divisor of ``samples`` up to
    ``limit``."""
    if samples <= limit:
        return None
    return next(size for size in range(limit, 0, -1) if samples % size == 0)
