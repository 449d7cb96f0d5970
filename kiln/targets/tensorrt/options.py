"""TensorRT's typed ``options``: the engine builder's settings and the Q/DQ recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from kiln.targets.base import TargetOptions
from kiln.targets.tensorrt.qdq import WEIGHTED, Method


class TensorRTOptions(TargetOptions):
    """The engine builder's settings and the Q/DQ recipe (``int8``, ``fp8``)."""

    workspace_mb: int = Field(2048, ge=16)
    # Optimization profiles: a list of { dim = { min, opt, max } } tables, checked against the
    # input spec in prepare; None: one profile from [model].dims.
    profiles: list[dict[str, dict[str, int]]] | None = None
    # The Q/DQ calibrator; None: minmax for int8, distribution for fp8 (its only choice).
    calibration_method: Method | None = None
    qdq_op_types: list[str] | None = None  # layers that get Q/DQ on their inputs; None: Conv, MatMul, Gemm
    optimization_level: int | None = Field(None, ge=0, le=5)  # None: TensorRT's default (3)
    # int8: what the layers left unquantized run in; fp32 builds a strongly typed network, fp16 a
    # weakly typed one (INT8 + FP16 flags), the only way to run an fp32 ONNX's layers in fp16.
    int8_fallback: Literal["fp16", "fp32"] = "fp16"
    sparse_weights: bool = False  # 2:4 sparse kernels without kiln's 2:4 pruning
    timing_cache: bool = True  # <out>/<model>/.trt-timing.cache, loaded and saved back

    @field_validator("calibration_method")
    @classmethod
    def _fp8_calibrates_by_distribution(cls, method: str | None, info: ValidationInfo) -> str | None:
        if method not in (None, "distribution") and (info.context or {}).get("precision") == "fp8":
            raise ValueError(f"fp8 calibrates with 'distribution' only, not {method!r}")
        return method

    @field_validator("qdq_op_types")
    @classmethod
    def _weighted_only(cls, op_types: list[str] | None) -> list[str] | None:
        if op_types is not None and (unknown := sorted(set(op_types) - set(WEIGHTED))):
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(WEIGHTED)}")
        return op_types
