"""ExecuTorch's typed ``options``: the delegate, memory planning and the program layout, each
checked against the delegate and the precision before any export."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kiln.targets.base import SearchSpace, TargetOptions

# Delegates whose partitioner imports and lowers on Linux with the pip wheel alone (executorch
# 1.5.1, measured): XNNPACK (runs here), Core ML (runs on Apple devices), Vulkan (runs on a GPU
# device build of the runtime); "portable" lowers nothing and runs every op on portable kernels.
# Left out, with why: QNN (its compile specs need the Qualcomm SDK, which it tries to download),
# MPS and Arm Ethos-U (not importable from the wheel), OpenVINO (fails on any dynamic dim: its
# preprocess receives a SymInt), MediaTek, Samsung and MLX (their SDK modules are not installed).
Delegate = Literal["xnnpack", "coreml", "vulkan", "portable"]
DELEGATES: tuple[str, ...] = ("xnnpack", "coreml", "vulkan", "portable")
# The delegates' names in the runtime's backend registry: a .pte loads only where they are registered.
BACKENDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend", "vulkan": "VulkanBackend"}
# Precisions whose quantized ops only XNNPACK runs.
QUANTIZED = ("int8", "int8-dynamic", "int4-dynamic")


class ExecuTorchOptions(TargetOptions):
    """Lowering settings; ``None`` takes ExecuTorch's default."""

    search_space: ClassVar[SearchSpace] = {
        "int8": (("per_channel", (False,)),),
        "int4-dynamic": (("group_size", (64, 128)),),
    }

    delegate: Delegate = "xnnpack"
    # Memory planning: "greedy" (ExecuTorch's default, reuses storage) or "naive" (one buffer per
    # tensor: larger, simpler to debug). Inputs and outputs planned into the arena by default;
    # false leaves them to the caller's buffers (what an app that owns its I/O memory wants).
    memory_planning: Literal["greedy", "naive"] = "greedy"
    alloc_graph_input: bool = True
    alloc_graph_output: bool = True
    # Delegate blobs as separate segments of the .pte (freeable after init) rather than inline.
    extract_delegate_segments: bool = True
    segment_alignment: int | None = Field(None, ge=1)  # bytes, a power of two; None: 128
    # int8: per-channel (default) or per-tensor weight scales.
    per_channel: bool = True
    # int4-dynamic: int4 weights in groups of this many input channels; None: 32.
    group_size: Literal[32, 64, 128, 256] | None = None
    # Core ML delegate only: its mlprogram compute precision, compute units and minimum OS.
    # None: fp32, as the precision says; fp16 halves the weights (widen [[target]].tolerance with it).
    compute_precision: Literal["fp16", "fp32"] | None = None
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] | None = None
    minimum_deployment_target: str | None = None  # "iOS17", "macOS14", ...; None: coremltools' own

    @field_validator("segment_alignment")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"must be a power of two, got {value}")
        return value

    @field_validator("per_channel")
    @classmethod
    def _int8_only(cls, value: bool, info: ValidationInfo) -> bool:
        precision = (info.context or {}).get("precision")
        if not value and precision not in (None, "int8"):
            raise ValueError(f"applies to executorch:int8 only, not {precision}; remove it")
        return value

    @field_validator("group_size")
    @classmethod
    def _int4_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        precision = (info.context or {}).get("precision")
        if value is not None and precision not in (None, "int4-dynamic"):
            raise ValueError(f"applies to executorch:int4-dynamic only, not {precision}; remove it")
        return value

    @model_validator(mode="after")
    def _fits_delegate(self, info: ValidationInfo) -> ExecuTorchOptions:
        precision = (info.context or {}).get("precision")
        coreml = ("compute_precision", "compute_units", "minimum_deployment_target")
        given = [name for name in coreml if getattr(self, name) is not None]
        if given and self.delegate != "coreml":
            raise ValueError(f"{given[0]} applies to delegate = 'coreml' only (this is {self.delegate!r}); remove it")
        # The pip runtime's portable kernels include no quantized op: only XNNPACK runs them.
        if precision in QUANTIZED and self.delegate != "xnnpack":
            raise ValueError(
                f"executorch:{precision} quantizes for XNNPACK; with delegate = {self.delegate!r} build "
                "executorch:fp32 (or the coreml target's own int8), or choose delegate = 'xnnpack'"
            )
        return self
