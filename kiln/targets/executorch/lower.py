"""From the captured program to a ``.pte``: quantize, re-trace at the max, lower, plan, write.

Every step imports ExecuTorch (or torchao) inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from kiln.errors import TargetBuildError, error_line
from kiln.spec import Signature, random_inputs
from kiln.targets import COREMLTOOLS, EXECUTORCH, TORCH, TORCHAO
from kiln.targets.base import CompileContext
from kiln.targets.executorch.options import ExecuTorchOptions

INSTALL = "pip install 'kiln[executorch]' -c constraints.txt"
XNNPACK_QUANTIZER = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer"
# The toolchains whose loggers (all of each tree) talk while lowering, and loggers named "root*".
NOISY = (*(p.module for p in (EXECUTORCH, COREMLTOOLS, TORCHAO, TORCH)), "root")
COREML_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Partitioners log per op and Core ML draws progress bars; none of it is actionable."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(NOISY)]
    loggers.append(logging.getLogger())
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def at_max(module: Any, sig: Signature) -> Any:
    """``module`` captured again with example inputs at every dim's max. ExecuTorch plans memory
    for the upper bound it finds in the program; tracing at the max makes the hints equal the
    bounds, so no dim's plan can end below its max (a plan capped at the example's size fails
    at ``set_inputs`` with error 0x10), and the FLOP estimate is taken at the planned sizes."""
    from kiln.capture.exporters.torch_export import capture
    from kiln.tensors import to_tensors

    return capture(module, tuple(to_tensors(sig, random_inputs(sig, "max", seed=0))), sig, strict=False)


def quantize_static(ctx: CompileContext, program: Any, options: ExecuTorchOptions) -> tuple[Any, dict[str, Any]]:
    """Static int8 through PT2E with the XNNPACK quantizer (symmetric; per-channel weights by
    default), observed on the build's one calibration set."""
    from kiln.quant import require_calibration
    from kiln.quant.pt2e import load_torchao, quantize

    calibration, notes = require_calibration(
        ctx.calibration, ctx.precision, f"{ctx.target.key} (pt2e, XNNPACKQuantizer)", ctx.calibration_guidance
    )
    xnn = load_torchao(XNNPACK_QUANTIZER, "executorch:int8", INSTALL)

    def quantizer(is_qat: bool) -> Any:
        made = xnn.XNNPACKQuantizer()
        config = xnn.get_symmetric_quantization_config(is_per_channel=options.per_channel, is_qat=is_qat)
        if is_qat:
            from kiln.quant.qat import histogram_ranges

            config = histogram_ranges(config)
        made.set_global(config)
        return made

    qat = None
    with quiet():
        if ctx.qat is not None:
            from kiln.quant.qat import pt2e_qat
            from kiln.targets import QAT_XNNPACK

            quantized, qat = pt2e_qat(ctx.qat, ctx.export.signature, calibration, quantizer, QAT_XNNPACK)
        else:
            quantized = quantize(program, ctx.export.signature, calibration.samples, quantizer(False))
    return quantized, {
        "qat": qat,
        "tool": "torchao.quantization.pt2e (XNNPACKQuantizer)" + (", quantization-aware training" if qat else ""),
        "weights": f"int8 symmetric {'per-channel' if options.per_channel else 'per-tensor'}",
        "activations": "int8 static (asymmetric, per tensor)",
        "calibration_samples": len(calibration.samples),
        "notes": notes,
    }


def quantize_dynamic(program: Any, precision: str, options: ExecuTorchOptions) -> tuple[Any, dict[str, Any]]:
    """Linear weights int8 per channel (``int8-dynamic``) or int4 in groups (``int4-dynamic``),
    activations quantized to int8 per token at run time: torchao's
    ``Int8DynamicActivationIntxWeightConfig``, which XNNPACK runs as qd8 GEMMs. No calibration."""
    import torch

    from kiln.quant.pt2e import load_torchao

    ao = load_torchao("torchao.quantization", f"executorch:{precision}", INSTALL)
    granularity = load_torchao("torchao.quantization.granularity", f"executorch:{precision}", INSTALL)
    gm = program.module()
    owners, left = set(), {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        weight = node.args[1]
        if weight.op != "get_attr" or not weight.target.endswith(".weight"):
            left[str(weight)] = "weight not a stored parameter"
            continue
        if sum(1 for user in weight.users) > 1 or _reads(gm, weight.target) > 1:
            left[weight.target] = "weight shared with another op (tied)"
            continue
        # torchao's quantized tensors intercept F.linear; aten.linear would decompose first.
        node.target = torch.nn.functional.linear
        owners.add(weight.target.rsplit(".", 1)[0])
    gm.recompile()
    group = options.group_size or 32
    if precision == "int4-dynamic":
        config = ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=granularity.PerGroup(group)
        )
        bad = {fqn for fqn in owners if gm.get_submodule(fqn).weight.shape[1] % group}
        left.update({f"{fqn}.weight": f"input width not a multiple of {group}" for fqn in bad})
        owners -= bad
    else:
        config = ao.Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=granularity.PerAxis(0)
        )
    try:
        with quiet():
            ao.quantize_(gm, config, filter_fn=lambda _m, fqn: fqn in owners)
    except Exception as err:  # torchao raises plain assertions from its packing code
        raise TargetBuildError(f"torchao dynamic quantization failed: {error_line(err)}") from err
    return gm, {
        "tool": "torchao.quantization.quantize_ (Int8DynamicActivationIntxWeightConfig)",
        "weights": f"int4 symmetric in groups of {group}" if precision == "int4-dynamic" else "int8 per channel",
        "activations": "int8 dynamic, per token (quantized at run time)",
        "linears": len(owners),
        "left_float": left,
    }


def _reads(gm: Any, fqn: str) -> int:
    return sum(len(n.users) for n in gm.graph.nodes if n.op == "get_attr" and n.target == fqn)


def partitioners(options: ExecuTorchOptions) -> list[Any]:
    """The delegate's partitioner, configured from the options ([] for ``portable``)."""
    if options.delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if options.delegate == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner()]
    if options.delegate == "coreml":
        return [_coreml(options)]
    return []


def _coreml(options: ExecuTorchOptions) -> Any:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    from kiln.errors import ConfigError

    target = None
    if options.minimum_deployment_target is not None:
        target = getattr(ct.target, options.minimum_deployment_target, None)
        if target is None:
            choices = [t for t in dir(ct.target) if t[:3] in ("iOS", "mac")]
            raise ConfigError(
                f"executorch: unknown minimum_deployment_target {options.minimum_deployment_target!r}; "
                f"choose one of: {', '.join(choices)}"
            )
    specs = CoreMLBackend.generate_compile_specs(
        compute_unit=ct.ComputeUnit[COREML_UNITS[options.compute_units or "all"]],
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if options.compute_precision == "fp16" else ct.precision.FLOAT32,
    )
    return CoreMLPartitioner(compile_specs=specs)


def lower(program: Any, options: ExecuTorchOptions, constant_methods: dict[str, Any] | None = None) -> Any:
    """``to_edge_transform_and_lower`` with the delegate's partitioner: the edge program manager
    (with ``constant_methods``, methods that return those values: an LLM's metadata)."""
    from executorch.exir import to_edge_transform_and_lower

    try:
        with quiet():
            return to_edge_transform_and_lower(
                program, partitioner=partitioners(options), constant_methods=constant_methods
            )
    except Exception as err:
        raise _failure(f"lowering to the {options.delegate} delegate", err) from err


def to_executorch(edge: Any, options: ExecuTorchOptions) -> Any:
    """The ExecuTorch program, memory planned as the options say."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy, naive
    from executorch.exir.passes import MemoryPlanningPass

    algo = MemoryPlanningAlgorithmSuite([naive if options.memory_planning == "naive" else greedy])
    planning = MemoryPlanningPass(
        memory_planning_algo=algo,
        alloc_graph_input=options.alloc_graph_input,
        alloc_graph_output=options.alloc_graph_output,
    )
    config = ExecutorchBackendConfig(
        memory_planning_pass=planning,
        extract_delegate_segments=options.extract_delegate_segments,
        **({"segment_alignment": options.segment_alignment} if options.segment_alignment else {}),
    )
    try:
        with quiet():
            return edge.to_executorch(config)
    except Exception as err:
        raise _failure("ExecuTorch emission (memory planning)", err) from err


def _failure(stage: str, err: Exception) -> TargetBuildError:
    return TargetBuildError(
        f"ExecuTorch: {stage} failed: {error_line(err)}; try delegate = 'portable' or another "
        "target, or make the failing dim static; --verbose shows the trace"
    )
