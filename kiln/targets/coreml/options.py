"""Core ML's typed ``options``: conversion and compression settings, checked against the precision."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from kiln.targets.base import TargetOptions

# precision -> (compression mode, weight dtype or palette bits)
MODES: dict[str, tuple[str, Any]] = {
    "fp16": ("none", None),
    "fp32": ("none", None),
    "int8": ("linear", "int8"),
    "int4": ("linear", "int4"),
    "palettize4": ("palettize", 4),
    "palettize": ("palettize", None),
    "w8a8": ("w8a8", "int8"),
}
# The granularities each compression mode takes.
GRANULARITIES = {"linear": ("per_channel", "per_block"), "palettize": ("per_tensor", "per_grouped_channel")}


class CoreMLOptions(TargetOptions):
    """Conversion and compression settings; ``None`` takes the precision's default."""

    # "iOS17"..., "macOS14"...; None: iOS17, or iOS18 where int4, blocks, grouped palettes or
    # joint compression need it. Checked against coremltools' own list when converting.
    minimum_deployment_target: str | None = None
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = "all"
    compute_precision: Literal["fp16", "fp32"] = "fp16"  # the compressed precisions' compute; fp32 is fp32
    # int8/int4: per_channel (int8 default) | per_block (int4 default); palettize: per_tensor
    # (default) | per_grouped_channel
    granularity: Literal["per_channel", "per_block", "per_tensor", "per_grouped_channel"] | None = None
    block_size: int | None = Field(None, ge=1)  # per_block; None: 32
    group_size: int | None = Field(None, ge=1)  # per_grouped_channel; None: 32
    nbits: Literal[1, 2, 3, 4, 6, 8] | None = None  # palettize: None is 6; palettize4 is 4
    weight_threshold: int | None = Field(None, ge=0)  # weights this small stay uncompressed; None: 2048
    enumerated_shapes: dict[str, list[list[int]]] | None = None  # {x = [[1, 3, 8, 8], [4, 3, 8, 8]]}
    # A causal LM's KV cache: "state" (default; Core ML state, iOS18+) or "explicit" (past/present
    # inputs and outputs, as the step graph has them); see kiln.targets.coreml.stateful.
    kv_cache: Literal["state", "explicit"] | None = None

    @field_validator("compute_units", mode="before")
    @classmethod
    def _lower(cls, units: Any) -> Any:
        return units.lower() if isinstance(units, str) else units

    @field_validator("granularity")
    @classmethod
    def _granularity_fits_mode(cls, granularity: str | None, info: ValidationInfo) -> str | None:
        precision = (info.context or {}).get("precision")
        allowed = GRANULARITIES.get(MODES.get(precision or "", ("", None))[0])
        if granularity is not None and allowed and granularity not in allowed:
            raise ValueError(f"{precision} takes {' or '.join(allowed)}, not {granularity!r}")
        return granularity

    @field_validator("nbits")
    @classmethod
    def _nbits_fits_precision(cls, nbits: int | None, info: ValidationInfo) -> int | None:
        precision = (info.context or {}).get("precision")
        mode, kind = MODES.get(precision or "", ("", None))
        if nbits is not None and mode == "palettize" and kind is not None and nbits != kind:
            raise ValueError(f"{precision} stores {kind}-bit palettes, not {nbits}; precision palettize chooses nbits")
        return nbits

    @field_validator("enumerated_shapes")
    @classmethod
    def _shapes_listed(cls, shapes: dict[str, list[list[int]]] | None) -> dict[str, list[list[int]]] | None:
        if shapes is not None and not all(shapes.values()):
            raise ValueError("must map input names to lists of shapes, e.g. {x = [[1, 3, 8, 8]]}")
        return shapes
