"""ONNX Runtime's typed ``options``: its quantizer settings (``int8``, ``int8-dynamic``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kiln.targets.base import TargetOptions


class ORTOptions(TargetOptions):
    """ONNX Runtime's quantizer settings (``int8``, ``int8-dynamic``); ``fp32``/``fp16`` read none."""

    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"  # int8 (static)
    percentile: float = Field(99.999, ge=90.0, le=100.0)  # with calibration_method = "percentile"
    # Per-channel weights; None: always for int8, for int8-dynamic only in attention graphs
    # (ORT 1.31's dynamic per-channel Gemm writes a wrong-axis scale on a CNN's head).
    per_channel: bool | None = None
    # ONNX op types to quantize; None: MatMul/Gemm/Conv in attention graphs, else all supported.
    op_types: list[str] | None = None
    # Quantize MatMuls fed by a GELU (int8); None: not in attention graphs (outlier channels).
    quantize_after_gelu: bool | None = None
