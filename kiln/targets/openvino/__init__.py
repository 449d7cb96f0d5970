"""OpenVINO on the CPU plugin. Execution precision is always set and recorded.

Toolchain: openvino 2026.4. On a CPU with AVX512-BF16 the plugin runs "fp32" models in bf16
unless told otherwise, so ``fp32`` here means ``INFERENCE_PRECISION_HINT=f32`` and ``bf16`` is its
own precision; the precision the compiled model reports is written into the manifest. The IR is
converted from kiln's ONNX with the spec's dim ranges, and saved without fp16 weight compression
so fp32 stays exact (``fp16`` stores fp16 weights). ``fp16`` asks for ``f16`` execution; a CPU
without AVX512-FP16/AMX-FP16 (Zen 4) runs it in bf16, and the manifest says so. ``int8``,
``int8-weights`` and ``int4`` are made by NNCF (:mod:`kiln.targets.openvino.quantize`); their
non-quantized ops run in f32. ``execution_precision`` is read back from the compiled model's
runtime graph: the precision its compute layers (convolutions, matmuls) really run in.

Telemetry is off: OpenVINO and NNCF send usage data through the optional ``openvino_telemetry``
package and fall back to a silent stub when it cannot be imported, so kiln blocks that import
(the registry row's ``blocked_imports``) before it imports OpenVINO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.spec import Arrays, Signature
from kiln.targets import block_imports
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.openvino.options import OpenVINOOptions
from kiln.tensors import named_outputs

MAIN = "model.xml"
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
QUANTIZED = ("int8", "int8-weights", "int4")


def _openvino() -> Any:
    block_imports()  # telemetry: fail its import before OpenVINO or NNCF try it
    import openvino as ov

    return ov


def partial_shapes(sig: Signature) -> dict[str, Any]:
    ov = _openvino()

    return {
        spec.name: ov.PartialShape([ov.Dimension(lo, hi) for lo, hi in sig.shape_range(spec)]) for spec in sig.inputs
    }


def compile_model(path: Path, precision: str, options: RunOptions) -> Any:
    ov = _openvino()

    core = ov.Core()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": HINTS.get(precision, "f32"),
        "PERFORMANCE_HINT": "THROUGHPUT" if options.mode == "throughput" else "LATENCY",
    }
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    if options.mode != "throughput":
        config["NUM_STREAMS"] = 1
    return core.compile_model(core.read_model(str(path)), "CPU", config)


COMPUTE = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution", "Deconvolution")
NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8"}


def compute_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers of the runtime graph run in each precision."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in COMPUTE:
            name = NAMES.get(rt["runtimePrecision"].astype(str), rt["runtimePrecision"].astype(str))
            counts[name] = counts.get(name, 0) + 1
    return counts


def execution_info(compiled: Any) -> dict[str, Any]:
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    counts = compute_precisions(compiled)
    hinted = {v: k for k, v in HINTS.items()}.get(hint, hint)
    ran = max(counts, key=lambda k: counts[k]) if counts else hinted
    return {
        "execution_precision": ran if len(counts) <= 1 else f"{ran} (mixed: {counts})",
        "inference_precision_hint": hinted,
        "compute_precisions": counts,
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
    }


class OVRunner(Runner):
    def __init__(self, artifact: Artifact, options: RunOptions) -> None:
        self.sig, self.options = artifact.signature, options
        self.compiled = compile_model(artifact.main, artifact.precision, options)
        self.request = self.compiled.create_infer_request()

    def infer(self, inputs: Arrays) -> Arrays:
        # share_inputs: the request reads the caller's arrays in place instead of copying them
        # (a 0.3 ms copy per call for a 224x224 image); outputs are copied, because a later call
        # reuses the request's output buffers.
        feed = {spec.name: inputs[spec.name] for spec in self.sig.inputs}
        result = self.request.infer(feed, share_inputs=True)
        return named_outputs(self.sig.outputs, [result[out] for out in self.compiled.outputs])

    def infer_many(self, batches: list[Arrays]) -> None:
        ov = _openvino()

        # The runtime's own concurrency: one request per stream it chose, kept busy.
        jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(self.compiled, max(1, jobs))
        for inputs in batches:
            queue.start_async({spec.name: inputs[spec.name] for spec in self.sig.inputs})
        queue.wait_all()

    def info(self) -> dict[str, Any]:
        return execution_info(self.compiled)


class OpenVINOTarget(Target):
    options_model = OpenVINOOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        ov = _openvino()
        sig = ctx.export.signature
        model = ov.Core().read_model(str(ctx.export.onnx_path))
        model.reshape(partial_shapes(sig))
        artifact = Artifact("openvino", ctx.precision, ctx.out_dir, MAIN, sig)
        quantized: dict[str, Any] = {}
        if ctx.precision in QUANTIZED:
            from kiln.targets.openvino.quantize import quantize

            model, quantized = quantize(ctx, model)
        ov.save_model(model, str(artifact.main), compress_to_fp16=ctx.precision == "fp16")
        compiled = compile_model(artifact.main, artifact.precision, RunOptions(threads=ctx.threads))
        artifact.info.update(execution_info(compiled))
        artifact.info.update({k: v for k, v in quantized.items() if k != "execution_precision"})
        hint = artifact.info.get("inference_precision_hint")
        if ctx.precision == "fp16" and hint != "fp16":
            artifact.info.notes.append(
                f"asked the CPU plugin for f16 execution; it runs {hint} "
                "(no native fp16 compute on this CPU); weights are stored in fp16"
            )
        return artifact

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        return OVRunner(artifact, options)


TARGET = OpenVINOTarget()
