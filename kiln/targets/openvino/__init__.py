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

A causal LM (``signature.generative``) becomes a stateful IR (:mod:`kiln.targets.openvino.stateful`),
named ``openvino_model.xml`` in a folder OpenVINO GenAI opens (:mod:`kiln.targets.openvino.genai`):
read from kiln's ONNX like any model, weight-compressed while it is still the step graph, then
made stateful (the cache in the request, ``beam_idx`` to reorder it). ``ov.convert_model`` on the
ExportedProgram gives the same logits (max difference 1.8e-7 from eager both ways, tiny Llama) and
decode speed, but takes 30-60 s where reading the ONNX takes about one (a 45 MB Llama, 2 cores).
The decode session keeps the cache in the request's variables; ``infer`` still runs the step
graph faithfully (the given past written into the variables, the presents read back). The CPU
plugin's defaults would change tokens (bf16 compute, a u8 KV cache), so the KV cache precision is
pinned with the execution precision: f32 for fp32 and the weight-only precisions, f16 for fp16,
bf16 for bf16. The plugin applies ``KV_CACHE_PRECISION`` where it fuses attention with the cache;
the precision the state is really held in is read back from the runtime graph as well.

Telemetry is off: OpenVINO and NNCF send usage data through the optional ``openvino_telemetry``
package and fall back to a silent stub when it cannot be imported, so kiln blocks that import
(the registry row's ``blocked_imports``) before it imports OpenVINO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.decoding import DecodeSession
from kiln.errors import TargetBuildError
from kiln.spec import Arrays, Signature
from kiln.targets import block_imports
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, ServedRun, Target
from kiln.targets.openvino import genai
from kiln.targets.openvino.options import OpenVINOOptions
from kiln.targets.openvino.stateful import (
    StatefulSession,
    cache_shapes,
    is_stateful,
    make_stateful,
    step_infer,
)
from kiln.targets.openvino.weights import name_program_weights, name_weights
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
    model = core.read_model(str(path))
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": HINTS.get(precision, "f32"),
        "PERFORMANCE_HINT": "THROUGHPUT" if options.mode == "throughput" else "LATENCY",
    }
    if is_stateful(model):  # the plugin's default KV cache is u8 whatever the execution precision
        config["KV_CACHE_PRECISION"] = HINTS.get(precision, "f32")
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    if options.mode != "throughput":
        config["NUM_STREAMS"] = 1
    return core.compile_model(model, "CPU", config)


# Reduced-precision execution of a stateful LLM IR kills some CPUs' plugin outright (SIGFPE in
# compile_model: seen with openvino 2026.4.1 at bf16 and 1 thread on an Intel Xeon with AMX; not on
# an AMD EPYC with AVX512-BF16, where bf16 and fp16 compile and run at 1 and 2 threads). Upstream:
# openvinotoolkit/openvino#33300 (an fp16 LLM, one core) and #35943 (compile_model on AVX-512 AMD).
CRASH_PRONE = ("bf16", "fp16")
UPSTREAM_SIGFPE = "openvinotoolkit/openvino#33300"
_PROBE = """
import sys
from pathlib import Path
from kiln.targets.base import RunOptions
from kiln.targets.openvino import compile_model
compile_model(Path(sys.argv[1]), sys.argv[2], RunOptions(threads=int(sys.argv[3]) or None))
"""


def probe_compile(path: Path, precision: str, threads: int | None) -> None:
    """Compile ``path`` once in a child process: a plugin that dies (a signal, not an exception)
    fails this build with one line, instead of killing kiln and every later process that opens
    the artifact. The child's own compile is thrown away; the caller compiles again."""
    import signal
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), precision, str(threads or 0)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode >= 0:
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise TargetBuildError(f"openvino:{precision}: compiling the stateful IR failed in a child process: {tail}")
        return
    name = signal.Signals(-done.returncode).name
    raise TargetBuildError(
        f"openvino:{precision} on a causal LM: OpenVINO's CPU plugin dies with {name} compiling the stateful IR on this "
        f"CPU at {threads or 'default'} thread(s) (upstream {UPSTREAM_SIGFPE}); build openvino:fp32 or openvino:int4 "
        "instead, or try more threads"
    )


def _type_name(value: Any) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


COMPUTE = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution", "Deconvolution")
NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "u8": "int8", "i8": "int8", "u4": "int4", "i4": "int4"}


def compute_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers of the runtime graph run in each precision."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in COMPUTE:
            name = NAMES.get(rt["runtimePrecision"].astype(str), rt["runtimePrecision"].astype(str))
            counts[name] = counts.get(name, 0) + 1
    return counts


def cache_info(compiled: Any) -> dict[str, Any]:
    """The KV cache's precision: asked (``KV_CACHE_PRECISION``) and held (the runtime precision
    of the state's reads)."""
    held: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) == "MemoryInput":
            name = NAMES.get(rt["runtimePrecision"].astype(str), rt["runtimePrecision"].astype(str))
            held[name] = held.get(name, 0) + 1
    asked = _type_name(compiled.get_property("KV_CACHE_PRECISION"))
    return {
        "kv_cache_precision": {v: k for k, v in HINTS.items()}.get(asked, NAMES.get(asked, asked)),
        "kv_cache_held": next(iter(held)) if len(held) == 1 else held,
    }


def execution_info(compiled: Any) -> dict[str, Any]:
    hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
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
        self.stateful = bool(self.request.query_state())

    def infer(self, inputs: Arrays) -> Arrays:
        if self.stateful:
            return step_infer(self.request, self.compiled, self.sig, inputs)
        # share_inputs: the request reads the caller's arrays in place instead of copying them
        # (a 0.3 ms copy per call for a 224x224 image); outputs are copied, because a later call
        # reuses the request's output buffers.
        feed = {spec.name: inputs[spec.name] for spec in self.sig.inputs}
        result = self.request.infer(feed, share_inputs=True)
        return named_outputs(self.sig.outputs, [result[out] for out in self.compiled.outputs])

    def decode_session(self, signature: Signature) -> DecodeSession | None:
        return StatefulSession(self.compiled, signature) if self.stateful else None

    def infer_many(self, batches: list[Arrays]) -> None:
        if self.stateful:  # one cache per request: requests in flight would share nothing sensible
            return super().infer_many(batches)
        ov = _openvino()

        # The runtime's own concurrency: one request per stream it chose, kept busy.
        jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(self.compiled, max(1, jobs))
        for inputs in batches:
            queue.start_async({spec.name: inputs[spec.name] for spec in self.sig.inputs})
        queue.wait_all()
        return None

    def info(self) -> dict[str, Any]:
        facts = execution_info(self.compiled)
        return {**facts, **cache_info(self.compiled)} if self.stateful else facts


def _named(model: Any, sig: Signature, shapes: dict[str, Any] | None = None) -> None:
    """A model converted from PyTorch: its inputs and outputs named as the signature, and the
    spec's dim ranges (or ``shapes``) set."""
    for port, name in zip(model.inputs, sig.input_names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, sig.outputs, strict=True):
        port.get_tensor().set_names({name})
    model.reshape(shapes or partial_shapes(sig))


def read_source(ctx: CompileContext) -> Any:
    """kiln's ONNX as OpenVINO IR, its inputs pinned and its weights named like the model."""
    ov = _openvino()
    sig = ctx.export.signature
    if sig.generative:
        # A causal LM converts from the captured program: its fused attention stays one
        # ScaledDotProductAttention op, which the CPU plugin runs over the stateful cache (the ONNX
        # holds it decomposed). Measured on tinyllm: 606 vs 492 tok/s for optimum-intel's IR.
        model = ov.convert_model(ctx.export.program())
        _named(model, sig, cache_shapes(sig))
        # kiln's step module holds the model as its attribute "model".
        name_program_weights(model, ctx.export.program(), strip="model.")
        return model
    model = ov.Core().read_model(str(ctx.export.onnx_path))
    model.reshape(partial_shapes(sig))
    name_weights(model, ctx.export.onnx_path)
    return model


class OpenVINOTarget(Target):
    options_model = OpenVINOOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        ov = _openvino()
        sig = ctx.export.signature
        # A causal LM's IR takes the name OpenVINO GenAI looks for (kiln.targets.openvino.genai).
        artifact = Artifact("openvino", ctx.precision, ctx.out_dir, genai.MAIN if sig.generative else MAIN, sig)
        quantized: dict[str, Any] = {}
        if ctx.qat is not None and ctx.precision == "int8":
            from kiln.targets.openvino.qat import nncf_qat
            from kiln.targets.openvino.quantize import overflow_fix

            model, artifact.qat, artifact.reference = nncf_qat(ctx, ov)
            _named(model, sig)
            fix, why = overflow_fix(ctx.options.overflow_fix)
            quantized = {
                "quantization": {
                    "tool": "nncf (PyTorch quantization-aware training)",
                    "weights": "int8",
                    "overflow_fix": fix,
                    "overflow_fix_why": why,
                }
            }
        else:
            model = read_source(ctx)
        if ctx.precision in QUANTIZED and artifact.qat is None:
            from kiln.targets.openvino.quantize import quantize

            model, quantized = quantize(ctx, model)  # a causal LM is compressed as the step graph
        stateful = make_stateful(model, sig) if sig.generative else {}
        ov.save_model(model, str(artifact.main), compress_to_fp16=ctx.precision == "fp16")
        if stateful and ctx.precision in CRASH_PRONE:
            probe_compile(artifact.main, ctx.precision, ctx.threads)
        compiled = compile_model(artifact.main, artifact.precision, RunOptions(threads=ctx.threads))
        artifact.info.update(execution_info(compiled))
        if stateful:
            artifact.info.update({**stateful, **cache_info(compiled)})
            if ctx.export.tokenizer_dir is not None:
                written, missing = genai.write_model_folder(ov, ctx.out_dir, ctx.export.tokenizer_dir)
                artifact.info.notes.append(
                    f"an OpenVINO GenAI model folder too ({', '.join([genai.MAIN, *written])}): "
                    "openvino_genai.LLMPipeline(folder, 'CPU') or ContinuousBatchingPipeline"
                    + (f"; {missing}" if missing else "")
                )
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

    def triton_parameters(self, run: ServedRun) -> dict[str, str]:
        """Triton's openvino backend compiles at a static batch of ``max_batch_size`` and fails
        smaller batches unless it pads them; a dynamic non-batch dim needs ``RESHAPE_IO_LAYERS``
        (the backend reads a config's -1 against the IR's bounded range as a mismatch)."""
        params = {"PERFORMANCE_HINT": run.mode.upper()}
        if run.threads:
            params["INFERENCE_NUM_THREADS"] = str(run.threads)
        params["NUM_STREAMS"] = str(run.streams or 1) if run.mode == "latency" else str(run.streams or "AUTO")
        if run.precision == "bf16":
            params["HINT_BF16"] = "YES"
        if run.max_batch:
            params["ENABLE_BATCH_PADDING"] = "YES"
        if run.dynamic_dims:
            params["RESHAPE_IO_LAYERS"] = "YES"
        return params


TARGET = OpenVINOTarget()
