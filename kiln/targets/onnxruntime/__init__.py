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

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.spec import Arrays, Signature
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
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
            shutil.copyfile(ctx.export.onnx_path, artifact.main)
            artifact.info.execution_precision = "fp32"
        else:
            from kiln.targets.onnxruntime.quantize import executed_precision, quantize

            artifact.info.update(quantize(ctx, ctx.export.onnx_path, artifact.main))
            if ctx.precision == "fp16":
                artifact.info.execution_precision = executed_precision(artifact.main)
        session(artifact.main, RunOptions(threads=ctx.threads))  # fail at build, not at first run
        return artifact

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        return ORTRunner(artifact.main, artifact.signature, options, artifact.info.execution_precision or "fp32")


TARGET = ORTTarget()
