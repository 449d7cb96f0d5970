"""What the registry's rows are made of: the toolchain packages (:class:`Package`), the default
parity tolerances by numeric format, the QAT paths and each quantizer's calibration guidance.
The rows themselves, and the questions asked of them, are :mod:`kiln.targets`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from kiln.config import Tolerance


@dataclass(frozen=True)
class Package:
    """A Python package kiln imports: its import name, the distributions that provide it (the
    first one installed is the version recorded), the pip extra that installs it, and its loggers
    that talk about their own internals per op or per pass (quieted unless ``--verbose``)."""

    module: str
    dists: tuple[str, ...]
    extra: str | None = None
    loggers: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    @property
    def install_hint(self) -> str:
        how = f"pip install 'kiln[{self.extra}]' -c constraints.txt" if self.extra else f"pip install {self.dists[0]}"
        return f"the Python package {self.module!r} ({how})"


TORCH = Package("torch", ("torch",), loggers=("torch", "torch.utils._pytree"))
ONNXRUNTIME = Package("onnxruntime", ("onnxruntime",), "onnxruntime")
OPENVINO = Package("openvino", ("openvino",), "openvino")
NNCF = Package("nncf", ("nncf",), "openvino", loggers=("nncf",))
TORCHAO = Package("torchao", ("torchao",), "aoti-int8", loggers=("torchao",))
COREMLTOOLS = Package("coremltools", ("coremltools",), "coreml", loggers=("coremltools",))
TENSORRT = Package("tensorrt", ("tensorrt-cu12", "tensorrt-cu13", "tensorrt"), "tensorrt")
EXECUTORCH = Package("executorch", ("executorch",), "executorch", loggers=("executorch",))
# kiln[executorch] installs torchao too
EXECUTORCH_TORCHAO = Package("torchao", ("torchao",), "executorch", loggers=("torchao",))

# What capture uses whatever the target: torch.export, the ONNX exporter, hf: and gguf: sources, pruning.
CAPTURE = (
    TORCH,
    Package("onnx", ("onnx",)),
    Package("onnxscript", ("onnxscript",), loggers=("onnxscript",)),
    Package("transformers", ("transformers",), "hf", loggers=("transformers",)),
    Package("gguf", ("gguf",), "hf", loggers=("gguf",)),
    Package("torch_pruning", ("torch-pruning",), "prune"),
)

# Default parity tolerances by numeric format (``None`` figures are not gated).
# A causal LM's generation gate reads min_cosine (per-step logits), min_top1 (teacher-forced next
# tokens), exact_tokens and max_perplexity_increase (relative to eager's held-out perplexity).
FP32 = Tolerance(max_rel=1e-4, min_cosine=0.99999, exact_tokens=True, max_perplexity_increase=0.001)
# Core ML at fp32: a causal LM's KV cache is Core ML state, which is fp16 on every device, so fp32
# logits carry the cache's fp16 rounding (tiny Llama, exact tokens: teacher-forced scaled_rel
# 4.4e-4 and 6.8e-4); max_rel is ten times FP32's, the rest as FP32.
COREML_FP32 = FP32.model_copy(update={"max_rel": 1e-3})
FP16 = Tolerance(max_rel=3e-2, min_cosine=0.999, min_top1=0.98, max_perplexity_increase=0.01)
BF16 = Tolerance(max_rel=5e-2, min_cosine=0.999, min_top1=0.98, max_perplexity_increase=0.02)
# int8 (static and dynamic): the per-output cosine is a backstop under the task metric, set below
# what correct int8 builds of a real transformer read on every CPU kiln was measured on:
# all-MiniLM-L6-v2's last_hidden_state, openvino int8 0.972 on AMD EPYC AVX512-VNNI (51623f8a)
# and on Intel Xeon AMX-INT8, where its sentence-embedding metric read 0.9915 (0.98 failed both);
# onnxruntime int8 0.981, int8-dynamic 0.983 (VNNI). A broken int8 (u8 x s8 products saturating
# on an AVX2-only host, before kiln's remedy) read 0.85-0.91 on a two-layer MLP: still caught.
INT8 = Tolerance(min_cosine=0.96, min_top1=0.95, max_perplexity_increase=0.05)
# fp16 / bf16 of a causal LM: a gate of 24 teacher-forced steps (the conformance LM: 3 prompts x 8
# tokens) reads 0.958 when one near-tie step flips, as OpenVINO's "fp16" did where the CPU plugin
# executes it in bf16 (AVX512-BF16 hosts; cosine and perplexity within FP16's bars): top-1 allows a
# flip in twenty; cosine and perplexity keep the precision's bars.
FP16_LM = FP16.model_copy(update={"min_top1": 0.95})
BF16_LM = BF16.model_copy(update={"min_top1": 0.95})
# int8 and int8-dynamic on a causal LM (activations quantized too: ONNX Runtime's 8-bit MatMulNBits
# computes in int8 at accuracy_level 4). Its worst teacher-forced step of 128 on SmolLM2-135M's
# 49,152 logits reads cosine 0.972-0.978 and top-1 0.930-0.977 at perplexity -0.0 %..+1.2 % (blocks
# of 128, 64, 32; VNNI host): a step near a tie flips, which toys with 384 logits never show. The
# bars sit below those; a broken int8 (per-tensor quantize_dynamic: top-1 0.805, +25 %) fails them.
INT8_LM = Tolerance(min_cosine=0.95, min_top1=0.90, max_perplexity_increase=0.05)
# int4 of a causal LM: perplexity and teacher-forced agreement are the figures that separate good
# 4-bit builds from bad ones; the worst step's cosine (of 128) is a tail figure. On SmolLM2-135M the
# builds those two accept read 0.82 (OpenVINO AWQ + scale estimation, 60 % int4: top-1 0.914,
# +3.7 %) to 0.998 (ONNX Runtime HQQ, blocks of 32); the ones they reject read -0.18 to 0.39
# (optimum-intel's AWQ export: 0.750, +13.5 %). The cosine bar sits between (docs/generative.md).
INT4_LM = Tolerance(min_cosine=0.6, min_top1=0.90, max_perplexity_increase=0.10)
# Weight-only int8 (activations stay float): cosine >= 0.99999 on a tiny attention block; on causal
# LMs (docs/generative.md) teacher-forced top-1 0.958-1.000, per-step cosine 0.9868-0.999997 and
# perplexity -0.18 %..+0.08 % (SmolLM2-135M: 0.961, 0.9868, -0.14 %), so the bars sit below the worst:
# top-1 3 points, cosine 1.5x its distance from 1, perplexity 10x the largest change.
INT8_WEIGHTS = Tolerance(min_cosine=0.98, min_top1=0.93, max_perplexity_increase=0.02)
INT4 = Tolerance(min_cosine=0.95, min_top1=0.90, max_perplexity_increase=0.10)
# The bars a causal LM's generation gate uses in place of a precision's own: (own, the LM's), for
# every precision whose default is the first (int8, int8-dynamic; int4, int4-weights, palettize...).
LM_BARS = ((FP16, FP16_LM), (BF16, BF16_LM), (INT8, INT8_LM), (INT4, INT4_LM))

# Quantization-aware training paths ([recovery] qat = true), each the target's own quantizer with
# fake quantization in the loop (see kiln.quant.qat).
QAT_X86 = "PT2E prepare_qat_pt2e with X86InductorQuantizer (the quantizer aoti:int8 uses)"
QAT_XNNPACK = "PT2E prepare_qat_pt2e with XNNPACKQuantizer (the quantizer executorch:int8 uses)"
QAT_QDQ = "PT2E QAT (X86InductorQuantizer: uint8 activations, int8 per-channel weights), exported as a Q/DQ ONNX"
QAT_QDQ_SYMMETRIC = "PT2E QAT with symmetric int8 activations (as TensorRT needs), exported as a Q/DQ ONNX"
QAT_NNCF = "NNCF's PyTorch QAT (nncf.quantize on the module, fine-tuned, then ov.convert_model)"

# How many calibration samples each quantizer's documentation asks for: ONNX Runtime's
# calibrators and PyTorch's PT2E observers see stable ranges from about 100; NNCF's default
# ``subset_size`` is 300.
ORT_SAMPLES, PT2E_SAMPLES, NNCF_SAMPLES = 100, 100, 300
