"""ONNX Runtime's own quantizers and float16 converter, fed by kiln's calibration set.

Toolchain: onnxruntime 1.31 (``onnxruntime.quantization``, ``onnxruntime.transformers.float16``).

- ``int8``: ``quant_pre_process`` (shape inference + ONNX optimizations), then ``quantize_static``
  in QDQ format, per-channel int8 weights, uint8 activations; calibration method from
  ``options.calibration_method`` (``minmax`` default, ``entropy``, ``percentile``); 7-bit weights
  (``reduce_range``) where the build host's int8 kernels saturate (:mod:`kiln.quant.saturation`). The
  calibration reader and pre-processing are shared with TensorRT's Q/DQ (:mod:`kiln.quant.ort`).
- ``int8-dynamic``: ``quantize_dynamic`` (int8 weights, activation ranges computed per run). On
  convolutions this takes the ``ConvInteger`` path, measured 2.7x *slower* than fp32 on a Zen 4
  CNN; kiln warns when most of a model's weighted ops are convolutions.
- ``int4``: weight-only ``MatMulNBits`` (:mod:`kiln.targets.onnxruntime.nbits`), no calibration.
- ``fp16``: every float initializer and op in fp16, graph inputs and outputs kept fp32
  (``keep_io_types``); ORT's CPU provider runs ops without fp16 kernels through inserted casts.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from kiln.capture.exporters.onnx import save_onnx
from kiln.errors import ConfigError, KilnWarning, TargetBuildError, error_line
from kiln.quant import require_calibration
from kiln.quant.ort import SampleReader, chunk_size, preprocess
from kiln.quant.saturation import decide
from kiln.targets.base import CompileContext, toolchain_prints
from kiln.targets.onnxruntime.options import ORTOptions


class SlowQuantizationWarning(KilnWarning):
    """A quantization mode known to be slower than fp32 for this kind of model."""


def quantize(ctx: CompileContext, src: Path, dest: Path) -> dict[str, Any]:
    """Write the ``ctx.precision`` version of ``src`` to ``dest``; returns manifest info."""
    precision = ctx.precision
    try:
        if precision == "fp16":
            return _fp16(ctx, src, dest)
        options: ORTOptions = ctx.options
        if precision == "int4" or (
            precision == "int8-dynamic" and options.weight_only_int8(ctx.export.signature.generative)
        ):
            from kiln.targets.onnxruntime.nbits import weight_only

            return weight_only(ctx, src, dest, 4 if precision == "int4" else 8)
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            preprocess(src, pre)
            if precision == "int8-dynamic":
                return _dynamic(ctx, pre, dest)
            return _static(ctx, pre, dest)
    except (ConfigError, TargetBuildError):
        raise
    except Exception as err:  # ORT and onnx raise their own error types and plain ones alike
        raise TargetBuildError(
            f"ONNX Runtime quantization failed: {error_line(err)}; "
            "try other options (calibration_method, block_size) or another precision; --verbose shows the trace"
        ) from err


def _static(ctx: CompileContext, pre: Path, dest: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options: ORTOptions = ctx.options
    calibration, notes = require_calibration(
        ctx.calibration, ctx.precision, f"{ctx.target.key} (onnxruntime)", ctx.calibration_guidance
    )
    method = options.calibration_method
    per_channel = True if options.per_channel is None else options.per_channel
    reduce_range, why = decide(options.reduce_range)
    extra: dict[str, Any] = {}
    if method == "percentile":
        extra["CalibPercentile"] = options.percentile
    chunk = chunk_size(len(calibration.samples), options.calibration_chunk)
    if chunk is not None:
        extra["CalibStridedMinMax"] = chunk  # ORT's name; its strided passes serve every method
    names = {i.name for i in onnx.load(str(pre), load_external_data=False).graph.input}
    chosen, attention = op_types(options, pre)
    keep_gelu = not attention if options.quantize_after_gelu is None else options.quantize_after_gelu
    excluded = [] if keep_gelu else after_gelu(pre)
    with toolchain_prints():
        quantize_static(
            str(pre),
            str(dest),
            SampleReader(calibration.samples, names),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options=extra,
            op_types_to_quantize=chosen,
            nodes_to_exclude=excluded,
            reduce_range=reduce_range,
        )
    return {
        "execution_precision": "int8",
        "quantization": {
            "tool": "onnxruntime.quantize_static",
            "format": "QDQ",
            "weights": _weights(per_channel, reduce_range),
            "reduce_range": reduce_range,
            "reduce_range_why": why,
            "activations": "uint8",
            "calibration_method": method,
            "attention_detected": attention,
            "op_types": chosen or "all supported",
            "kept_fp32": excluded,
            "calibration_samples": len(calibration.samples),
            "calibration_chunk": chunk or len(calibration.samples),
        },
        "notes": notes,
    }


def _weights(per_channel: bool, reduce_range: bool) -> str:
    scales = "per-channel" if per_channel else "per-tensor"
    return f"int8 {scales}, 7-bit range (reduce_range)" if reduce_range else f"int8 {scales}"


def has_attention(path: Path) -> bool:
    """A Softmax fed (through a few elementwise ops) by a MatMul: an attention block."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    producer = {out: n for n in nodes for out in n.output}
    for node in nodes:
        if node.op_type != "Softmax":
            continue
        frontier = [node]
        for _ in range(4):
            parents = [producer[i] for n in frontier for i in n.input if i in producer]
            if any(p.op_type == "MatMul" for p in parents):
                return True
            frontier = [p for p in parents if p.op_type in ("Add", "Mul", "Div", "Where", "Cast")]
    return False


def op_types(options: ORTOptions, pre: Path) -> tuple[list[str] | None, bool]:
    """Which op types to quantize, and whether attention was detected. In attention graphs only
    the weighted ops are: the mask ``Add`` carries values near the float minimum, whose range
    would swamp an int8 scale, and int8 embedding tables (``Gather``) cost accuracy for no speed."""
    attention = has_attention(pre)
    if options.op_types is not None:
        return list(options.op_types), attention
    return (["MatMul", "Gemm", "Conv"] if attention else None), attention


def after_gelu(path: Path) -> list[str]:
    """MatMuls fed by a GELU: the FFN down-projections of a transformer. GELU outputs carry a few
    outlier channels that a static per-tensor uint8 scale cannot hold (on all-MiniLM-L6-v2 they
    alone take the sentence-embedding cosine from 0.991 to 0.945), so static int8 leaves them in
    fp32; NNCF's transformer mode handles them with SmoothQuant instead."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    producer = {out: n for n in nodes for out in n.output}
    found = []
    for node in nodes:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        frontier = [producer[i] for i in node.input if i in producer]
        for _ in range(3):
            if any(p.op_type in ("Gelu", "Erf", "FastGelu", "BiasGelu") for p in frontier):
                found.append(node.name)
                break
            frontier = [producer[i] for n in frontier for i in n.input if i in producer]
    return found


def conv_share(path: Path) -> tuple[int, int]:
    """(convolutions, weighted ops) in a graph: Conv vs Conv + MatMul + Gemm."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    convs = sum(op in ("Conv", "ConvTranspose") for op in ops)
    return convs, convs + sum(op in ("MatMul", "Gemm") for op in ops)


def _dynamic(ctx: CompileContext, pre: Path, dest: Path) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights lift all-MiniLM-L6-v2's embedding cosine from 0.967 to 0.993; the default
    # is per-channel for attention graphs only, because ORT 1.31's dynamic per-channel Gemm writes
    # a wrong-axis scale that fails shape inference (seen on a CNN's classifier head).
    options: ORTOptions = ctx.options
    chosen, attention = op_types(options, pre)
    per_channel = attention if options.per_channel is None else options.per_channel
    notes = []
    convs, weighted = conv_share(pre)
    if weighted and convs * 2 > weighted:
        note = (
            f"{ctx.target.key}: {convs} of {weighted} weighted ops are convolutions; ONNX Runtime's dynamic "
            "quantization runs them through ConvInteger, measured 2.7x slower than fp32 on CPUs: "
            "use onnxruntime:int8 (static) for conv nets"
        )
        warnings.warn(note, SlowQuantizationWarning, stacklevel=2)
        notes.append(note)
    reduce_range, why = decide(options.reduce_range)
    quantize_dynamic(
        str(pre),
        str(dest),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=chosen,
        reduce_range=reduce_range,
    )
    return {
        "execution_precision": "int8-dynamic",
        "quantization": {
            "tool": "onnxruntime.quantize_dynamic",
            "weights": _weights(per_channel, reduce_range),
            "reduce_range": reduce_range,
            "reduce_range_why": why,
            "activations": "uint8, ranges computed per run",
            "attention_detected": attention,
            "op_types": chosen or "all supported",
            "conv_ops": convs,
            "weighted_ops": weighted,
            **_head_and_embeddings(dest),
        },
        "notes": notes,
    }


def _head_and_embeddings(path: Path) -> dict[str, str]:
    """For a graph with a ``logits`` output: whether its head and its embedding tables ended up int8."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if "logits" not in {o.name for o in graph.output}:
        return {}
    producer = {out: n for n in graph.node for out in n.output}
    node, hops = producer.get("logits"), 0
    while node is not None and node.op_type not in ("MatMulInteger", "MatMul", "Gemm") and hops < 6:
        node, hops = next((producer[i] for i in node.input if i in producer), None), hops + 1
    embeddings = (
        "int8" if any(n.op_type == "Gather" and n.input[0].endswith("_quantized") for n in graph.node) else "fp32"
    )
    return {
        "lm_head": "int8" if node is not None and node.op_type == "MatMulInteger" else "fp32",
        "embeddings": embeddings,
    }


def _fp16(ctx: CompileContext, src: Path, dest: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: callers keep feeding and reading fp32; casts sit at the graph edges.
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    save_onnx(converted, dest)
    casts = sum(n.op_type == "Cast" for n in converted.graph.node)
    return {
        "execution_precision": "fp16",
        "quantization": {"tool": "onnxruntime.transformers.float16", "keep_io_types": True, "casts": casts},
        "notes": [],
    }


def executed_precision(path: Path) -> str:
    """What ORT's CPU provider really runs an fp16 graph in, read from its optimized graph: on
    CPUs without fp16 kernels it inserts casts and folds the fp16 weights back to fp32."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    kinds = [
        t.data_type for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    half = sum(k == onnx.TensorProto.FLOAT16 for k in kinds)
    if half == 0:
        return "fp32 (fp16 graph cast back to fp32 by the CPU provider: no fp16 kernels here)"
    return "fp16" if half == len(kinds) else f"mixed: {half} of {len(kinds)} float weights fp16 after optimization"
