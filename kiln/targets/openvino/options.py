"""OpenVINO's typed ``options``: NNCF's settings for ``int8``, ``int8-weights`` and ``int4``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kiln.targets.base import ModelFacts, SearchSpace, TargetOptions

MODES = {"int8-weights": ("int8_asym", "int8_sym"), "int4": ("int4_sym", "int4_asym")}
# What a causal LM gets when int4's group size and mode are not given: asymmetric, as optimum-intel
# does for an LLM, in the largest of these groups that divides every layer's input width (128 is
# optimum-intel's default; measured on a 94M Llama: 95 decode tok/s against 37 at fp32; SmolLM2's
# 576-wide layers take 64: compress.model_group); other models keep kiln's earlier defaults (int4_sym
# in groups of 64).
LLM_GROUPS, LLM_MODE = (128, 64, 32), "int4_asym"
OTHER_GROUP, OTHER_MODE = 64, "int4_sym"
INT4_ONLY = (
    "group_size",
    "ratio",
    "group_size_fallback",
    "awq",
    "scale_estimation",
    "dataset",
    "subset_size",
    "backup_mode",
    "all_layers",
    "fallback",
    "blocks",
    "block_activations",
)
# int4's NNCF settings: given any of them, blocks = "auto" leaves the model to NNCF.
NNCF_INT4 = ("mode", "group_size", "ratio", "awq", "scale_estimation", "dataset", "backup_mode", "all_layers")
# int4 of a causal LM, when the plain setting breaches the gate (kiln build's accuracy-controlled
# search), in this order: data-aware (AWQ and scale estimation on text: kiln's own unless
# options.dataset or [calibration] gives some), then smaller groups, then a growing share of layers
# kept in int8 (ranked by their activations on that text). On SmolLM2-135M: see docs/generative.md.
DATA_AWARE = {"awq": True, "scale_estimation": True}
INT4_FALLBACKS = (
    DATA_AWARE,
    {**DATA_AWARE, "group_size": 32},
    {**DATA_AWARE, "group_size": 32, "ratio": 0.8},
    {**DATA_AWARE, "group_size": 32, "ratio": 0.6},
    {**DATA_AWARE, "group_size": 32, "ratio": 0.4},
)
# Without a tokenizer or [calibration] there is no data: smaller groups, then int8 by weight error.
INT4_FALLBACKS_DATA_FREE = tuple({k: v for k, v in s.items() if k not in DATA_AWARE} for s in INT4_FALLBACKS[1:])


class OpenVINOOptions(TargetOptions):
    """NNCF's settings: ``int8`` (``nncf.quantize``) and the weight-only ``int8-weights`` /
    ``int4`` (``nncf.compress_weights``); the float precisions read none. ``None``: detected or
    NNCF's choice for the graph."""

    search_space: ClassVar[SearchSpace] = {
        "int8": (
            ("preset", ("performance", "mixed")),
            ("fast_bias_correction", (False,)),
            ("range_estimator", ("nncf",)),
        ),
        "int8-weights": (("mode", ("int8_sym",)),),
        "int4": (("group_size", (128, -1)), ("mode", ("int4_asym",))),
    }

    # int8
    model_type: Literal["transformer", "none"] | None = None  # None: transformer when attention is found
    preset: Literal["performance", "mixed"] | None = None  # None: mixed for transformers, else performance
    fast_bias_correction: bool = True
    range_estimator: Literal["minmax", "nncf"] = "minmax"
    accuracy_control: bool = True  # with [evaluation] and [gates].max_metric_drop
    # NNCF's overflow fix (half the weight range); None: "enable" where the build host has no VNNI
    # int8 dot product (full-range products saturate there: kiln.quant.saturation), else NNCF's
    # "first_layer".
    overflow_fix: Literal["enable", "first_layer", "disable"] | None = None
    # int8-weights (None: int8_asym) and int4 (None: int4_asym for a causal LM, else int4_sym)
    mode: Literal["int8_asym", "int8_sym", "int4_sym", "int4_asym"] | None = None
    # int4. group_size None: from a causal LM's widths (compress.model_group), else 64; -1 is one group per output channel.
    group_size: int | None = Field(None, ge=-1, le=4096)
    ratio: float = Field(1.0, ge=0.0, le=1.0)  # the share of ratio-defining layers in int4, the rest backup_mode
    # Layers whose input width the group size does not divide: "adjust" gives them the largest
    # power-of-two group (>= 32) that does, else backup_mode; "ignore" keeps them float; "error"
    # refuses the build. Which layers fell back is recorded either way.
    group_size_fallback: Literal["adjust", "ignore", "error"] = "adjust"
    # Data-aware int4 (NNCF's AWQ and scale estimation): need data, from ``dataset`` (a text file,
    # tokenized with the model's tokenizer) or else [calibration] (step-graph samples).
    awq: bool = False
    scale_estimation: bool = False
    dataset: str | None = None  # a text file, relative to the config; read by int4 only
    subset_size: int = Field(128, ge=1, le=4096)  # samples NNCF draws from the data
    backup_mode: Literal["int8_asym", "int8_sym", "none"] | None = None  # None: NNCF's int8_asym
    # The embeddings and the LM head: False keeps them in backup_mode (NNCF's default), True
    # compresses them to int4 with the rest.
    all_layers: bool = False
    # int4 from a model whose weights lie on a 4-bit GGUF grid (a gguf: source dequantized from
    # Q4_0 / Q4_1, its embeddings Q8_0): "source" writes those blocks back (kiln.targets.openvino.blocks:
    # the reference to f32 rounding, at the file's size) and refuses a model that has none;
    # "nncf" re-quantizes with NNCF; "auto": "source" when every layer NNCF would make int4 is on a
    # grid and no NNCF setting is given here, else "nncf".
    blocks: Literal["auto", "source", "nncf"] = "auto"
    # The source's blocks: "float" keeps f32 activations (the reference to f32 rounding, tokens
    # exact); "int8" writes them signed with no zero point (Q4_1's minimum a separate block-sum
    # product), so the CPU plugin quantizes the activations to int8 in groups of 32 at run time (its
    # VNNI kernel, as llama.cpp's Q8_1 activations): on SmolLM2 a 21 % shorter TTFT, the same decode
    # tokens/s, teacher-forced top-1 0.93 (kiln.targets.openvino.blocks).
    block_activations: Literal["float", "int8"] = "float"
    # int4 of a causal LM: when the build breaches its gate, try INT4_FALLBACKS (the options given
    # here are never changed) and keep the first that passes; false: keep the first build.
    fallback: bool = True

    def fallbacks(self, precision: str, facts: ModelFacts) -> tuple[dict[str, Any], ...]:
        if precision != "int4" or not facts.generative or not self.fallback or self.blocks == "source":
            return ()
        return INT4_FALLBACKS if facts.data or self.dataset is not None else INT4_FALLBACKS_DATA_FREE

    @field_validator("mode")
    @classmethod
    def _mode_fits_precision(cls, mode: str | None, info: ValidationInfo) -> str | None:
        precision = (info.context or {}).get("precision")
        allowed = MODES.get(precision or "")
        if mode is not None and allowed and mode not in allowed:
            raise ValueError(f"{mode!r} is not an {precision} mode; choose {' or '.join(allowed)}")
        return mode

    @field_validator("group_size")
    @classmethod
    def _group_is_positive_or_per_channel(cls, group: int | None) -> int | None:
        if group == 0:
            raise ValueError("0 is not a group size; give a positive width (128, 64, ...) or -1 (per channel)")
        return group

    @field_validator(*INT4_ONLY)
    @classmethod
    def _int4_only(cls, value: object, info: ValidationInfo) -> object:
        precision = (info.context or {}).get("precision")
        if precision is not None and precision != "int4":
            raise ValueError(f"applies to int4 only (this target is {precision}); drop it or use precision = 'int4'")
        return value

    @model_validator(mode="after")
    def _source_blocks_alone(self) -> OpenVINOOptions:
        given = [k for k in NNCF_INT4 if k in self.model_fields_set]
        if self.blocks == "source" and given:
            raise ValueError(
                f"blocks = 'source' writes the source's own blocks and reads no NNCF setting ({', '.join(given)}); "
                "drop them or set blocks = 'nncf'"
            )
        return self

    @model_validator(mode="after")
    def _dataset_is_read(self) -> OpenVINOOptions:
        if self.dataset is not None and not (self.awq or self.scale_estimation or self.ratio < 1):
            raise ValueError(
                "options.dataset is read only by awq, scale_estimation or ratio < 1; set one of them or drop dataset"
            )
        return self
