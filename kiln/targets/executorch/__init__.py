"""ExecuTorch: a ``.pte`` program for edge devices, lowered from the same ``torch.export`` capture.

Toolchain: executorch 1.5.1 (torch 2.13, torchao 0.18). The captured program is traced again
with example inputs at every dim's max (ExecuTorch plans memory for the upper bound it finds:
see :func:`kiln.targets.executorch.lower.at_max`), lowered with
``to_edge_transform_and_lower`` and the delegate's partitioner, memory planned, and written to
``model.pte``. The planned upper bound of every named dim is read back from the emitted program
and must equal the dim's max, or the build fails. It runs on ``executorch.runtime`` with the
XNNPACK thread pool set to the build's thread count.

Delegates (``options.delegate``): ``xnnpack`` (default; Arm and x86 CPUs, runs here), ``coreml``
(lowered and saved here, runs on Apple devices: the gate runs the coreml target's PyTorch
simulation of its weights, labelled simulated; ``compute_precision = "fp16"`` stores fp16 weights
and computes in fp16, so widen the target's ``tolerance`` with it, e.g. ``{ max_rel = 3e-2,
min_cosine = 0.999 }``), ``vulkan`` (lowered here, runs on a GPU device build of the runtime:
built, not run; its partitioner fails on some dynamic-dim graphs, e.g. a flatten), ``portable``
(no delegate: every op on portable kernels). The partitioners of QNN, MPS, Arm, OpenVINO,
MediaTek, Samsung and MLX do not lower on Linux from the wheel alone (see
:mod:`kiln.targets.executorch.options`). The runtime has no quantized portable kernels, so the
quantized precisions need ``xnnpack``.

Precisions: ``fp32``; ``int8``: static PT2E with ``XNNPACKQuantizer`` (symmetric int8, weights per
channel, activations per tensor) from ``[calibration]``; ``int8-dynamic`` / ``int4-dynamic``:
torchao's ``Int8DynamicActivationIntxWeightConfig`` on the Linear layers (int8 per-channel or
int4 grouped weights, activations quantized per token at run time; convolutions stay fp32).
Weight-only torchao (``IntxWeightOnlyConfig``) is not offered: measured here, XNNPACK lowers it
to an fp32-sized .pte whose outputs are wrong (cosine 0.95 against the model's own 1.0).

A causal LM is built in ExecuTorch's own LLM form instead (:mod:`kiln.targets.executorch.llm`): a
static KV cache in the program, updated in place by ExecuTorch's custom ops, its metadata
methods and ``tokenizer.json`` beside the .pte, as ExecuTorch's LLM runner loads them.

The manifest records (``execution``) the delegate, the planned upper bounds, the ops and
estimated FLOPs inside the delegate and left on portable kernels
(:mod:`kiln.targets.executorch.delegation`), the .pte size and the ExecuTorch version; when most
of the compute stays on portable kernels it says so (``portable_fallback``, a note and a
:class:`PortableFallbackWarning`), naming the ops: the .pte will be slow on the device.
"""

from __future__ import annotations

import platform
from typing import Any

from kiln.errors import TargetBuildError, UnavailableError
from kiln.manifest import Execution
from kiln.spec import Signature
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target, TargetOptions
from kiln.targets.executorch.checks import PortableFallbackWarning as PortableFallbackWarning
from kiln.targets.executorch.checks import _check_kernels, _flag_portable, _version
from kiln.targets.executorch.options import BACKENDS, ExecuTorchOptions

MAIN = "model.pte"
DYNAMIC = ("int8-dynamic", "int4-dynamic")


class ExecuTorchTarget(Target):
    options_model = ExecuTorchOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        from kiln.targets.executorch import lower
        from kiln.targets.executorch.delegation import analyse

        options: ExecuTorchOptions = ctx.options
        sig = ctx.export.signature
        if sig.generative:  # ExecuTorch's LLM form: a static cache in the program
            from kiln.targets.executorch.llm import compile_llm

            return compile_llm(ctx)
        program, quantization = ctx.export.program(), None
        if ctx.precision == "int8":
            program, quantization = lower.quantize_static(ctx, program, options)
            module = program.module()
        elif ctx.precision in DYNAMIC:
            module, quantization = lower.quantize_dynamic(program, ctx.precision, options)
        else:
            module = program.module()
        edge = lower.lower(lower.at_max(module, sig), options)
        delegation = analyse(edge.exported_program().graph_module, options.delegate)
        emitted = lower.to_executorch(edge, options)
        path = ctx.out_dir / MAIN
        path.write_bytes(emitted.buffer)
        plan = emitted.executorch_program.execution_plan[0]
        info = Execution(execution_precision=_precision(ctx.precision, options))
        info.update(
            {
                "delegate": options.delegate,
                "planned_upper_bounds": planned_bounds(plan, sig),
                "planned_arena_bytes": int(sum(plan.non_const_buffer_sizes)),
                "delegation": delegation.record(),
                "pte_bytes": path.stat().st_size,
                "executorch_version": _version(),
                "memory_planning": {
                    "algorithm": options.memory_planning,
                    "alloc_graph_input": options.alloc_graph_input,
                    "alloc_graph_output": options.alloc_graph_output,
                },
            }
        )
        qat = None
        if quantization is not None:
            info.notes.extend(quantization.pop("notes", []))
            qat = quantization.pop("qat", None)
            info.quantization = quantization
        _check_kernels(plan, options, info)
        _flag_portable(delegation, info)
        reference = program.module() if qat is not None else None  # QAT's trained int8 model
        return Artifact("executorch", ctx.precision, ctx.out_dir, MAIN, sig, info=info, qat=qat, reference=reference)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        from kiln.targets.executorch.runner import PteRunner

        if artifact.signature.generative:
            from kiln.targets.executorch.llm import LlmRunner

            return LlmRunner(artifact, options)

        # A .pte whose delegate's backend this runtime lacks fails in load_method with a bare error
        # code ("0x:20"); name the backend instead, for callers that did not ask available_here.
        delegate = (artifact.info.get("delegation") or {}).get("delegate", "xnnpack")
        backend = BACKENDS.get(delegate)
        if backend is not None and not _registered(backend):
            raise UnavailableError(
                f"executorch: {artifact.main.name} is lowered to {backend}, which this ExecuTorch runtime does not "
                f"have; run it on a device whose runtime registers {backend} (macOS/iOS for Core ML)"
            )
        return PteRunner(artifact.main, artifact.signature, options)

    def run_blocker(self, options: TargetOptions) -> str | None:
        """XNNPACK is in every ExecuTorch runtime; Core ML's backend only in Apple builds (asked of
        the runtime there), Vulkan's in none that pip installs."""
        assert isinstance(options, ExecuTorchOptions)
        if options.delegate == "coreml" and (platform.system() != "Darwin" or not _registered(BACKENDS["coreml"])):
            return (
                "lowered: yes; run: needs macOS or iOS (ExecuTorch's Core ML backend; this runtime has none), "
                "so the gate runs the Core ML simulation"
            )
        if options.delegate == "vulkan":
            return "lowered: yes; run: needs an ExecuTorch runtime built with the Vulkan backend and a Vulkan GPU"
        return None

    def simulated_runner(self, artifact: Artifact, ctx: CompileContext) -> Runner | None:
        """For the Core ML delegate, the coreml target's simulation: the eager module with batch
        norms folded and every weight as the fp16 (or fp32) mlprogram stores it."""
        options: ExecuTorchOptions = ctx.options
        if options.delegate != "coreml":
            return None
        from kiln.targets.coreml.compress import Settings
        from kiln.targets.coreml.simulation import simulate, weighted_module
        from kiln.targets.eager import TorchRunner

        compute = options.compute_precision or "fp32"
        module = weighted_module(ctx.export.program())
        simulate(module, Settings(precision="fp32", mode="none", compute_precision=compute))
        artifact.info.simulation = (
            f"coreml target's simulation on the eager module (batch norm folded, weights rounded as {compute} "
            "Core ML stores them, fp32 arithmetic)"
        )
        return TorchRunner(module, artifact.signature, RunOptions(threads=ctx.threads))


def _precision(precision: str, options: ExecuTorchOptions) -> str:
    """What executes: the precision itself (its details are in ``quantization``), or the Core ML
    delegate's compute precision."""
    return (options.compute_precision or "fp32") if options.delegate == "coreml" else precision


def planned_bounds(plan: Any, sig: Signature) -> dict[str, int]:
    """Each named dim's size in the emitted program's input tensors (their planned upper bound);
    a bound below the dim's max is a build failure, never a .pte that fails on a device."""
    bounds: dict[str, int] = {}
    for spec, index in zip(sig.inputs, plan.inputs, strict=False):
        sizes = list(plan.values[index].val.sizes)
        for axis, name in enumerate(spec.shape):
            if isinstance(name, str) and axis < len(sizes):
                bounds[name] = min(bounds.get(name, sizes[axis]), int(sizes[axis]))
    short = {name: size for name, size in bounds.items() if size < sig.dims[name].max}
    if short:
        name, size = next(iter(short.items()))
        raise TargetBuildError(
            f"ExecuTorch planned dim {name!r} up to {size}, below its max {sig.dims[name].max}: inputs at the max "
            "would fail at set_inputs; report this, or lower [model].dims max to what the model traces at"
        )
    return bounds


def _registered(backend: str) -> bool:
    """Whether this ExecuTorch runtime has a delegate's backend (imports the runtime)."""
    from kiln.targets.executorch.runner import runtime

    rt, _ = runtime()
    return bool(rt.backend_registry.is_available(backend))


TARGET = ExecuTorchTarget()
