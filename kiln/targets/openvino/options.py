"""OpenVINO's typed ``options``: NNCF's settings for ``int8``, ``int8-weights`` and ``int4``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from kiln.targets.base import TargetOptions

MODES = {"int8-weights": ("int8_asym", "int8_sym"), "int4": ("int4_sym", "int4_asym")}


class OpenVINOOptions(TargetOptions):
    """NNCF's settings: ``int8`` (``nncf.quantize``) and the weight-only ``int8-weights`` /
    ``int4`` (``nncf.compress_weights``); the float precisions read none. ``None``: detected or
    NNCF's choice for the graph."""

    # int8
    model_type: Literal["transformer", "none"] | None = None  # None: transformer when attention is found
    preset: Literal["performance", "mixed"] | None = None  # None: mixed for transformers, else performance
    fast_bias_correction: bool = True
    range_estimator: Literal["minmax", "nncf"] = "minmax"
    accuracy_control: bool = True  # with [evaluation] and [gates].max_metric_drop
    # int8-weights (int8_asym default) and int4 (int4_sym default)
    mode: Literal["int8_asym", "int8_sym", "int4_sym", "int4_asym"] | None = None
    # int4
    group_size: int = Field(64, ge=-1, le=4096)
    ratio: float = Field(1.0, ge=0.0, le=1.0)  # the share of layers in int4, the rest int8
    group_size_fallback: Literal["adjust", "ignore", "error"] = "adjust"

    @field_validator("mode")
    @classmethod
    def _mode_fits_precision(cls, mode: str | None, info: ValidationInfo) -> str | None:
        precision = (info.context or {}).get("precision")
        allowed = MODES.get(precision or "")
        if mode is not None and allowed and mode not in allowed:
            raise ValueError(f"{mode!r} is not an {precision} mode; choose {' or '.join(allowed)}")
        return mode
