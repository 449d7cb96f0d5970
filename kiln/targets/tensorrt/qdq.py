"""The explicit-quantization (Q/DQ) ONNX a TensorRT int8 or fp8 engine is built from; CPU only.

TensorRT 10 deprecates implicit INT8 calibration; its guidance for explicit quantization is what
this module produces from kiln's one calibration spec, with ONNX Runtime's static quantizer:

- symmetric quantization (zero points are 0), ``int8`` (or ``float8e4m3fn`` for fp8);
- Q/DQ on the *inputs* of the weighted layers (Conv, MatMul, Gemm) only, never on their outputs,
  one dedicated pair per consumer (TensorRT cannot share a pair between layers);
- weights per output channel for int8 (Conv axis 0, Gemm ``transB`` axis 0, MatMul axis 1),
  per tensor for fp8; activations always per tensor;
- biases stay float (TensorRT fuses them itself); weights keep a Q -> DQ pair on the float
  initializer, the form quantization-aware training exports and TensorRT folds.

The result is then proven: ``onnx.checker``, the Q/DQ counts and the placement rules above
(:func:`qdq_placement`), and ONNX Runtime on the CPU running the Q/DQ graph as written (graph
optimizations off, so no int8 kernel substitutes its own numerics) against the fp32 model
within the precision's tolerance, on the calibration data.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kiln.config import Tolerance
from kiln.errors import ConfigError, MissingDependencyError, ParityError, TargetBuildError
from kiln.parity import ParityReport
from kiln.spec import Arrays

QDQ_ONNX = "model.qdq.onnx"
QDQ_REPORT = "qdq.json"
WEIGHTED = ("Conv", "MatMul", "Gemm")
CHECK_CASES = 16
Method = Literal["minmax", "entropy", "percentile", "distribution"]
# kiln's spelling -> ONNX Runtime's CalibrationMethod member
METHODS: dict[str, str] = {
    "minmax": "MinMax",
    "entropy": "Entropy",
    "percentile": "Percentile",
    "distribution": "Distribution",
}
# ONNX TensorProto element types of the quantized values.
INT8, FLOAT8E4M3FN = 3, 17


@dataclass(frozen=True)
class QDQRecipe:
    precision: str  # int8 | fp8
    op_types: tuple[str, ...] = WEIGHTED
    calibration_method: str = "minmax"

    @property
    def per_channel(self) -> bool:
        return self.precision == "int8"

    @property
    def element_type(self) -> int:
        return INT8 if self.precision == "int8" else FLOAT8E4M3FN

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "op_types": list(self.op_types),
            "calibration_method": self.calibration_method,
            "weights": "per-channel (output axis)" if self.per_channel else "per-tensor",
            "activations": "per-tensor",
            "symmetric": True,
            "bias": "float (not quantized)",
        }


def recipe_for(precision: str, op_types: list[str] | None = None, method: str | None = None) -> QDQRecipe:
    """The Q/DQ recipe for ``int8`` or ``fp8`` from the target's (validated) options; ``None``
    takes the default: every weighted op type, minmax for int8 and distribution for fp8."""
    chosen = method or ("distribution" if precision == "fp8" else "minmax")
    return QDQRecipe(precision, tuple(op_types) if op_types is not None else WEIGHTED, chosen)


def make_qdq(src: Path, dst: Path, samples: list[Arrays], recipe: QDQRecipe) -> None:
    """Calibrate on ``samples`` and write the Q/DQ model of ``src`` to ``dst``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from kiln.quant.ort import SampleReader, chunk_size, preprocess  # shared with the ONNX Runtime target

    reader = SampleReader(samples, set().union(*(s.keys() for s in samples)))
    qtype = QuantType.QInt8 if recipe.precision == "int8" else QuantType.QFLOAT8E4M3FN
    chunk = chunk_size(len(samples))  # in passes of a few samples: memory bounded (see chunk_size)
    strided = {} if chunk is None else {"CalibStridedMinMax": chunk}
    with tempfile.TemporaryDirectory(prefix="kiln-qdq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(src, pre)  # shape inference + folding, as the quantizer expects
        try:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types),
                per_channel=recipe.per_channel,
                activation_type=qtype,
                weight_type=qtype,
                calibrate_method=getattr(CalibrationMethod, METHODS[recipe.calibration_method]),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "AddQDQPairToWeight": True,
                    "DedicatedQDQPair": True,
                    "OpTypesToExcludeOutputQuantization": list(recipe.op_types),
                    **strided,
                },
            )
        except Exception as err:
            raise TargetBuildError(
                f"ONNX Runtime's static quantizer failed on {src.name}: {type(err).__name__}: {err}; "
                "try options.calibration_method or options.qdq_op_types, --verbose shows the trace"
            ) from err
    proto = onnx.load(str(dst))
    used = {node.domain for node in proto.graph.node} | {""}
    # The quantized file declares domains no node uses (ai.onnx.ml, com.microsoft.nchwc, ...); drop them.
    kept = [op for op in proto.opset_import if op.domain in used or op.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    onnx.save_model(proto, str(dst))


def _array(name: str, inits: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _weight_axis(node: Any) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    return 1


def qdq_placement(proto: Any, recipe: QDQRecipe) -> dict[str, Any]:
    """Counts and the rule breaches of a Q/DQ model against TensorRT's placement guidance."""
    inits = {init.name: init for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    problems: list[str] = []
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in proto.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
            zp = node.input[2] if len(node.input) > 2 else ""
            if zp not in inits:
                problems.append(f"{node.name}: no zero point initializer")
                continue
            if inits[zp].data_type != recipe.element_type:
                problems.append(f"{node.name}: quantized type {inits[zp].data_type}, expected {recipe.element_type}")
            elif np.any(_array(zp, inits).astype(np.float32) != 0):
                problems.append(f"{node.name}: zero point is not 0 (asymmetric)")
    quantized: dict[str, int] = {}
    unquantized: list[str] = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHTED:
            continue
        act, weight = (producers.get(name) for name in node.input[:2])
        if act is None or act.op_type != "DequantizeLinear" or weight is None or weight.op_type != "DequantizeLinear":
            unquantized.append(node.name)
            continue
        quantized[node.op_type] = quantized.get(node.op_type, 0) + 1
        act_scale = _array(act.input[1], inits)
        if act_scale is None or act_scale.size != 1:
            problems.append(f"{node.name}: activation scale is not per-tensor")
        w_scale = _array(weight.input[1], inits)
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        if recipe.per_channel:
            source = producers.get(weight.input[0])
            w_name = source.input[0] if source is not None and source.op_type == "QuantizeLinear" else weight.input[0]
            w = _array(w_name, inits)
            out_axis = _weight_axis(node)
            if w is None or w_scale is None or w_scale.size != w.shape[out_axis] or axis != out_axis:
                problems.append(f"{node.name}: weight scale is not per output channel (axis {out_axis})")
        elif w_scale is None or w_scale.size != 1:
            problems.append(f"{node.name}: weight scale is not per-tensor")
        bias = producers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias.op_type == "DequantizeLinear":
            problems.append(f"{node.name}: bias is quantized (TensorRT wants a float bias)")
    problems += [
        f"{node.name}: operator {node.domain}::{node.op_type} is not standard ONNX (TensorRT's parser rejects it)"
        for node in proto.graph.node
        if node.domain not in ("", "ai.onnx")
    ]
    if not quantized:
        problems.append(f"no {'/'.join(recipe.op_types)} layer has Q/DQ on its inputs")
    return {**counts, "quantized_layers": quantized, "unquantized_layers": unquantized, "problems": problems}


def _session(path: Path, optimize: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_qdq(fp32: Path, qdq: Path, cases: list[Arrays], tolerance: Tolerance) -> ParityReport:
    """The Q/DQ graph, run as written on ONNX Runtime's CPU, against the fp32 model."""
    ref, got = _session(fp32, True), _session(qdq, False)
    names = [o.name for o in ref.get_outputs()]
    report = ParityReport(tolerance)
    for case in cases:
        expected = dict(zip(names, ref.run(names, case), strict=True))
        report.add_case(dict(zip(names, got.run(names, case), strict=True)), expected)
    return report


def check_cases(samples: list[Arrays], count: int = CHECK_CASES) -> list[Arrays]:
    """Up to ``count`` calibration samples spread over the set: in-distribution check inputs."""
    if len(samples) <= count:
        return list(samples)
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, count)]


def prepare_qdq(
    src: Path, folder: Path, samples: list[Arrays], recipe: QDQRecipe, tolerance: Tolerance
) -> dict[str, Any]:
    """Write ``model.qdq.onnx`` and ``qdq.json`` into ``folder``; raise when a check fails."""
    import importlib.util

    import onnx

    from kiln.capture.exporters.onnx import written_opset

    if importlib.util.find_spec("onnxruntime") is None:
        raise MissingDependencyError(
            f"tensorrt:{recipe.precision} makes its Q/DQ ONNX with ONNX Runtime's quantizer: pip install 'kiln[tensorrt]'"
        )

    if recipe.precision == "fp8" and written_opset(onnx.load(str(src), load_external_data=False)) < 19:
        raise ConfigError("tensorrt:fp8 needs float8 QuantizeLinear (ONNX opset >= 19); set [export] opset = 20")
    dst = folder / QDQ_ONNX
    make_qdq(src, dst, samples, recipe)
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except Exception as err:
        raise TargetBuildError(f"the Q/DQ ONNX fails onnx.checker: {err}; report the model") from err
    placement = qdq_placement(onnx.load(str(dst)), recipe)
    parity = compare_qdq(src, dst, check_cases(samples), tolerance)
    report = {
        "file": QDQ_ONNX,
        "recipe": recipe.to_dict(),
        "calibration_samples": len(samples),
        "placement": placement,
        "parity_vs_fp32": {
            "cases": parity.cases,
            "outputs": {k: v.result().model_dump() for k, v in parity.outputs.items()},
        },
        "parity_breaches": parity.breaches(),
        "checked_with": "onnx.checker (full) and ONNX Runtime CPU, graph optimizations off",
    }
    (folder / QDQ_REPORT).write_text(json.dumps(report, indent=2))
    if placement["problems"]:
        raise TargetBuildError(
            f"the Q/DQ ONNX breaks TensorRT's placement rules: {placement['problems'][0]} "
            f"(and {len(placement['problems']) - 1} more, see {QDQ_REPORT}); report the model"
        )
    if parity.breaches():
        raise ParityError(
            f"the {recipe.precision} Q/DQ model drifts from fp32 on the calibration data: {parity.breaches()[0]}; "
            "try options.calibration_method = 'entropy' or 'percentile', more calibration samples, or a looser tolerance"
        )
    return report
