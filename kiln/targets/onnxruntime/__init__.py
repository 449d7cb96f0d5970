"""ONNX Runtime on the CPU execution provider, every graph optimization on, threads set.

Toolchain: onnxruntime 1.31. The artifact is the ONNX file the session loads; the session
applies its hardware-specific optimizations at load time (saving an ``ORT_ENABLE_ALL`` graph
would tie the file to this CPU). ``int8`` (static QDQ), ``int8-dynamic`` and ``fp16`` are made by
ORT's own tools in :mod:`kiln.targets.onnxruntime.quantize`; ``int4`` (weight-only MatMulNBits)
in :mod:`kiln.targets.onnxruntime.nbits`.

Options (``options`` in ``[[target]]``, :class:`ORTOptions`): ``calibration_method``,
``percentile``, ``per_channel``, ``op_types`` and ``quantize_after_gelu``; ``None`` leaves the
choice to what kiln measured best for the graph (attention or not). ``int4`` reads
``block_size``, ``symmetric``, ``accuracy_level``, ``lm_head`` and ``embeddings``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.capture.exporters.onnx import copy_onnx
from kiln.spec import Arrays, Signature
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, ServedRun, Target
from kiln.targets.onnxruntime.options import ORTOptions
from kiln.tensors import named_outputs

MAIN = "model.onnx"


def session(path: Path, options: RunOptions) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = options.threads or 0
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class ORTRunner(Runner):
    def __init__(self, path: Path, sig: Signature, options: RunOptions, precision: str = "fp32") -> None:
        self.sig, self.options, self.precision = sig, options, precision
        self.session = session(path, options)
        self.names = [o.name for o in self.session.get_outputs()]

    def infer(self, inputs: Arrays) -> Arrays:
        feed = {spec.name: inputs[spec.name] for spec in self.sig.inputs}
        return named_outputs(self.sig.outputs or tuple(self.names), self.session.run(self.names, feed))

    def infer_many(self, batches: list[Arrays]) -> None:
        # InferenceSession.run is thread-safe: keep `requests` runs in flight at once.
        with ThreadPoolExecutor(max_workers=max(1, self.options.requests)) as pool:
            list(pool.map(self.infer, batches))

    def info(self) -> dict[str, Any]:
        return {
            "threads": self.options.threads or "ort-default",
            "providers": self.session.get_providers(),
            "execution_precision": self.precision,
        }


class ORTTarget(Target):
    options_model = ORTOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        artifact = Artifact("onnxruntime", ctx.precision, ctx.out_dir, MAIN, ctx.export.signature)
        if ctx.precision == "fp32":
            copy_onnx(ctx.export.onnx_path, artifact.main)  # with its external data file, if any
            artifact.info.execution_precision = "fp32"
        elif ctx.qat is not None:
            from kiln.quant.saturation import decide

            reduce_range, why = decide(ctx.options.reduce_range)
            program, artifact.qat = qat_qdq(ctx, artifact.main, symmetric=False, reduce_range=reduce_range)
            artifact.reference = program.module()
            artifact.info.execution_precision = "int8"
            artifact.info.quantization = {
                "tool": "torchao PT2E quantization-aware training, exported as Q/DQ ONNX",
                "format": "QDQ (the session fuses Q/DQ pairs into integer kernels)",
                "weights": "int8 symmetric per-channel",
                "activations": "uint8 per tensor, 7-bit range (reduce_range)" if reduce_range else "uint8 per tensor",
                "reduce_range": reduce_range,
                "reduce_range_why": why,
            }
        else:
            from kiln.targets.onnxruntime.quantize import executed_precision, quantize

            artifact.info.update(quantize(ctx, ctx.export.onnx_path, artifact.main))
            if ctx.precision == "fp16":
                artifact.info.execution_precision = executed_precision(artifact.main)
        session(artifact.main, RunOptions(threads=ctx.threads))  # fail at build, not at first run
        tokenizer = ctx.export.tokenizer_dir
        if ctx.export.signature.generative and tokenizer is not None:  # ONNX Runtime GenAI opens the folder too
            from kiln.targets.onnxruntime.genai import write_model_folder

            written = write_model_folder(ctx.out_dir, ctx.export.signature, MAIN, tokenizer)
            artifact.info.notes.append(
                f"an ONNX Runtime GenAI model folder too ({', '.join(written)}): onnxruntime_genai.Model(folder), "
                f"batch up to {ctx.export.signature.dims['batch'].max}"
            )
        return artifact

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        return ORTRunner(artifact.main, artifact.signature, options, artifact.info.execution_precision or "fp32")

    def triton_parameters(self, run: ServedRun) -> dict[str, str]:
        return {
            "intra_op_thread_count": str(run.threads or 0),  # 0: ONNX Runtime's default (physical cores)
            "inter_op_thread_count": "1",
            "execution_mode": "0",  # sequential, as kiln's runner
        }


def qat_qdq(ctx: CompileContext, dest: Path, symmetric: bool, reduce_range: bool = False) -> tuple[Any, Any]:
    """Quantization-aware training on the float model, the trained program exported to ``dest``
    as a Q/DQ ONNX (also TensorRT's, with ``symmetric`` activations); returns the trained
    program (quantize/dequantize pairs) and the QAT report. ``reduce_range``: 7-bit uint8
    activations, for a CPU whose int8 kernels saturate (not with ``symmetric``)."""
    import functools

    from kiln.quant.qat import pt2e_qat, qdq_onnx, symmetric_quantizer, x86_quantizer
    from kiln.targets import QAT_QDQ, QAT_QDQ_SYMMETRIC

    assert ctx.qat is not None
    sig, opset = ctx.export.signature, ctx.export.opset or 20
    x86 = functools.partial(x86_quantizer, reduce_range=reduce_range)
    quantizer, path = (symmetric_quantizer, QAT_QDQ_SYMMETRIC) if symmetric else (x86, QAT_QDQ)
    program, report = pt2e_qat(ctx.qat, sig, ctx.require_qat_data(), quantizer, path)
    qdq_onnx(program, sig, dest, opset)
    return program, report


TARGET = ORTTarget()
