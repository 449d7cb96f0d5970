"""ONNX Runtime's typed ``options``: its quantizer settings (``int8``, ``int8-dynamic``, ``int4``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kiln.quant.ort import CHUNK
from kiln.targets.base import ModelFacts, SearchSpace, TargetOptions

# Weight-only MatMulNBits settings: int4, and int8-dynamic when its activations stay float.
NBITS_ONLY = ("block_size", "symmetric", "accuracy_level", "fallback")
INT4_ONLY = ("lm_head", "embeddings", "algorithm", "blocks")
# int4's quantizer settings: given any of them, blocks = "auto" leaves the model to the quantizer.
QUANTIZER_INT4 = ("block_size", "symmetric", "lm_head", "embeddings", "algorithm")
# int4 of a causal LM, when the plain setting breaches the gate (kiln build's accuracy-controlled
# search), in this order: smaller asymmetric blocks (still MLAS's int8 fast path), then HQQ's fitted
# scales and float zero points in smaller and smaller blocks. On SmolLM2-135M: docs/generative.md.
# Last, the embeddings back in fp32 (an int4 table costs SmolLM2 about 8 points of top-1).
INT4_FALLBACKS: tuple[dict[str, Any], ...] = (
    {"block_size": 32, "symmetric": False},
    {"algorithm": "hqq", "block_size": 64},
    {"algorithm": "hqq", "block_size": 32},
    {"algorithm": "hqq", "block_size": 32, "embeddings": "fp32"},
)
# A GGUF source's own blocks at accuracy level 4 quantize the activations to int8 per block; when
# that breaches, the same blocks computed in fp32 reproduce the reference (slower).
SOURCE_FALLBACK: dict[str, Any] = {"accuracy_level": 1}
# 8-bit MatMulNBits of a causal LM (int8-dynamic, activations float in the weights but int8 in the
# accuracy_level 4 compute, per block): smaller blocks, a finer activation quantization too.
# SmolLM2-135M, chat prompts: top-1 0.898 in blocks of 128 at perplexity +0.03 % (docs/generative.md).
INT8_FALLBACKS: tuple[dict[str, Any], ...] = ({"block_size": 64}, {"block_size": 32})


class ORTOptions(TargetOptions):
    """ONNX Runtime's quantizer settings (``int8``, ``int8-dynamic``, ``int4``); ``fp32``/``fp16`` read none."""

    search_space: ClassVar[SearchSpace] = {
        "int8": (("calibration_method", ("entropy", "percentile")), ("per_channel", (False,))),
        "int8-dynamic": (("per_channel", (True,)),),
        "int4": (("block_size", (32, 64)), ("accuracy_level", (0,))),
    }

    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"  # int8 (static)
    percentile: float = Field(99.999, ge=90.0, le=100.0)  # with calibration_method = "percentile"
    # int8 (static): calibration samples per pass; ORT's calibrator holds every intermediate tensor
    # of a pass, so memory grows with this, not with the calibration set (kiln.quant.ort.chunk_size).
    calibration_chunk: int = Field(CHUNK, ge=1)
    # int8-dynamic: "dynamic" quantizes activations per run (quantize_dynamic: MatMulInteger);
    # "none" keeps them float, 8-bit weights as MatMulNBits (ONNX Runtime's own LLM path). None: "none"
    # for a causal LM, whose activations per-tensor dynamic quantization does not suit (SmolLM2-135M:
    # perplexity +52.7 %, teacher-forced agreement 0.833), "dynamic" for everything else.
    activations: Literal["dynamic", "none"] | None = None
    # Per-channel weights; None: always for int8, for int8-dynamic only in attention graphs
    # (ORT 1.31's dynamic per-channel Gemm writes a wrong-axis scale on a CNN's head).
    per_channel: bool | None = None
    # ONNX op types to quantize; None: MatMul/Gemm/Conv in attention graphs, else all supported.
    op_types: list[str] | None = None
    # Quantize MatMuls fed by a GELU (int8); None: not in attention graphs (outlier channels).
    quantize_after_gelu: bool | None = None
    # int8 / int8-dynamic: 7-bit weights; None: where the build host has no VNNI int8 dot product,
    # on which full-range u8 x s8 products saturate (kiln.quant.saturation).
    reduce_range: bool | None = None
    # int4 (weight-only MatMulNBits): weights in blocks of block_size along the input width K.
    block_size: int = 128  # 16, 32, 64, 128 or 256 (what ORT's MLAS block quantizer takes)
    symmetric: bool = True  # no zero points
    # The lowest precision MatMulNBits may compute in: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
    # (activations quantized per block at run time; the fast path on x86 CPUs).
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    # The MatMul(s) producing `logits`: int8 MatMulNBits by default (see nbits.py for why).
    lm_head: Literal["int4", "int8", "fp32"] = "int8"
    # Gather embedding tables: fp32 (a lookup: no compute to save) or int4 GatherBlockQuantized.
    # None: int4 for a causal LM (its table is a fifth of SmolLM2-135M's weights: kept fp32, the
    # int4 artifact is 42 % of fp32's size, with it 25 %), else fp32.
    embeddings: Literal["fp32", "int4"] | None = None
    # How int4 blocks are fitted: "rtn" (round to nearest, ORT's default quantizer) or "hqq"
    # (half-quadratic optimization of scales and float zero points, data-free; ORT's HQQ quantizer,
    # asymmetric: `symmetric` does not apply; int4 embeddings are still RTN: HQQ takes MatMuls only).
    algorithm: Literal["rtn", "hqq"] = "rtn"
    # int4 of a model whose weights lie on a GGUF grid (Q4_0 / Q4_1 / Q8_0: a gguf: source):
    # "source" writes the file's own blocks as MatMulNBits (kiln.targets.onnxruntime.blocks) and
    # refuses a model with weights on none; "quantizer": ORT's quantizer as set here; "auto":
    # "source" when every MatMul weight and table is on a grid and no quantizer setting is given.
    blocks: Literal["auto", "source", "quantizer"] = "auto"
    # int4 and 8-bit MatMulNBits of a causal LM: when the build breaches its gate, try INT4_FALLBACKS
    # / INT8_FALLBACKS (the options given here are never changed) and keep the first that passes;
    # false: keep the first build.
    fallback: bool = True

    def embeddings_for(self, generative: bool) -> Literal["fp32", "int4"]:
        """What int4 does with the embedding tables: the option, else int4 for a causal LM."""
        return self.embeddings or ("int4" if generative else "fp32")

    def fallbacks(self, precision: str, facts: ModelFacts) -> tuple[dict[str, Any], ...]:
        if not facts.generative or not self.fallback:
            return ()
        if precision == "int8-dynamic" and self.weight_only_int8(generative=True):
            return INT8_FALLBACKS
        if precision != "int4":
            return ()
        if self.blocks == "source":
            return (SOURCE_FALLBACK,)
        if facts.gguf and self.blocks == "auto":  # the file's blocks again, computed in fp32: exact
            return (SOURCE_FALLBACK, *INT4_FALLBACKS)
        return INT4_FALLBACKS

    @model_validator(mode="after")
    def _source_blocks_alone(self) -> ORTOptions:
        given = [k for k in QUANTIZER_INT4 if k in self.model_fields_set]
        if self.blocks == "source" and given:
            raise ValueError(
                f"blocks = 'source' writes the source's own blocks and reads no quantizer setting ({', '.join(given)}); "
                "drop them or set blocks = 'quantizer'"
            )
        return self

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size < 16 or size > 256 or size & (size - 1):
            raise ValueError(f"must be a power of two from 16 to 256 (16, 32, 64, 128, 256), got {size}")
        return size

    @field_validator(*INT4_ONLY)
    @classmethod
    def _int4_only(cls, value: object, info: ValidationInfo) -> object:
        precision = (info.context or {}).get("precision")
        if precision is not None and precision != "int4":
            raise ValueError(f"applies to onnxruntime:int4 only, not {precision}; remove it")
        return value

    @field_validator(*NBITS_ONLY)
    @classmethod
    def _nbits_only(cls, value: object, info: ValidationInfo) -> object:
        precision = (info.context or {}).get("precision")
        if precision is not None and precision not in ("int4", "int8-dynamic"):
            raise ValueError(f"applies to MatMulNBits (int4, int8-dynamic weight-only), not {precision}; remove it")
        return value

    @field_validator("activations")
    @classmethod
    def _dynamic_only(cls, value: object, info: ValidationInfo) -> object:
        precision = (info.context or {}).get("precision")
        if precision is not None and precision != "int8-dynamic":
            raise ValueError(f"applies to onnxruntime:int8-dynamic only, not {precision}; remove it")
        return value

    def weight_only_int8(self, generative: bool) -> bool:
        """Whether int8-dynamic keeps activations float (8-bit MatMulNBits weights)."""
        return self.activations == "none" or (self.activations is None and generative)
