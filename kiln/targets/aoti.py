"""PyTorch AOTInductor: the captured program compiled ahead of time into a ``.pt2`` package.

Toolchain: torch 2.13 ``torch._inductor.aoti_compile_and_package`` (needs g++); the package loads
with ``aoti_load_package`` and runs without the model's Python code. Dynamic dims of the capture
are kept. Compiling takes tens of seconds per model on 2 cores.

``int8`` comes from PT2E (:mod:`kiln.quant.pt2e`) with torchao's ``X86InductorQuantizer`` in its
default configuration (static, per-channel symmetric int8 weights, uint8 activations). Inductor
fuses the quantize/dequantize pairs into oneDNN int8 kernels (``onednn.qconv``/``qlinear``) only
with ``freezing`` on; measured with torch 2.13 + torchao 0.18, those fused kernels return wrong
results (top-1 10 % on digits) when the program has a dynamic dim, and match the quantized model
(max abs 0.009) when every dim is static. So kiln fuses for all-static specs and otherwise
compiles the int8-rounded program unfused (int8 numerics, fp32 kernels: no int8 speed-up), and
says so in the manifest; ``options.fuse_int8 = true`` forces fusion (the parity gate then tells
whether it is right).

``int8-weights`` and ``int4-weights`` are weight-only, no calibration: torchao's ``quantize_``
(``Int8WeightOnlyConfig``: per-row symmetric int8; ``PrototypeInt4WeightOnlyConfig``: the CPU
packing ``Int4OpaqueTensor``, asymmetric int4 in groups along K) swaps the Linear weights of the
captured program's module, which is then captured again with the spec's dims. Measured with
torch 2.13 + torchao 0.18 on CPU (4 Linear 1024x1024, batch 1, AOTI): the int4 kernel
(``aten._weight_int4pack_mm_for_cpu``) takes 0.51 ms with bf16 activations and 11 ms with fp32
ones (fp32 linear: 1.0 ms); int8 weights reach Inductor's fused ``_weight_int8pack_mm`` (0.63 ms)
only with bf16 activations, and are dequantized to fp32 on every call otherwise. So by default
(``options.compute = "bf16"``) each quantized Linear runs on bf16 activations, cast in and out
(the rest of the graph stays fp32); ``compute = "fp32"`` keeps fp32 activations, correct and slow.
Embedding tables stay fp32 (a lookup). The LM head (the Linear producing ``logits``) is int8 by
default (``options.lm_head``): int4 there took a trained tiny Llama's greedy agreement from 1.0
to 0.47. A weight shared with the embedding (tied) is copied first, so the table stays fp32;
``addmm`` on a stored weight (GPT-2's Conv1D) becomes a Linear on a transposed copy. The package
needs no torchao to run.
"""

from __future__ import annotations

import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationInfo, field_validator

from kiln.errors import TargetBuildError, error_line
from kiln.manifest import Execution, QatReport
from kiln.targets import QAT_X86
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, SearchSpace, Target, TargetOptions
from kiln.targets.eager import TorchRunner

MAIN = "model.pt2"
INSTALL = "pip install 'kiln[aoti-int8]' -c constraints.txt"


WEIGHT_ONLY = ("int8-weights", "int4-weights")
KERNELS = {
    ("int4", "bf16"): "aten._weight_int4pack_mm_for_cpu on bf16 activations",
    ("int4", "fp32"): "aten._weight_int4pack_mm_for_cpu on fp32 activations (measured ~10x slower than fp32)",
    ("int8", "bf16"): "Inductor's fused int8 weight-only GEMM (aten._weight_int8pack_mm) on bf16 activations",
    ("int8", "fp32"): "int8 weights dequantized to fp32 on every call, fp32 GEMM (no int8 speed-up)",
}
# FX ops a head's output may pass through on its way to `logits` (views, casts, scaling, soft-capping).
PASSTHROUGH = ("view", "reshape", "slice", "to", "_to_copy", "contiguous", "clone", "mul", "div", "tanh", "alias")


class AOTIOptions(TargetOptions):
    search_space: ClassVar[SearchSpace] = {
        "int8": (("fuse_int8", (True,)),),
        "int4-weights": (("group_size", (32, 64)),),
    }
    # Fuse int8 q/dq pairs into oneDNN kernels; None: only when every dim is static (see above).
    fuse_int8: bool | None = None
    # int4-weights: groups along the input width K (what the CPU int4 packing takes); None: per
    # layer, the largest of 128, 64, 32 that divides its K (a layer no group divides stays fp32).
    group_size: Literal[32, 64, 128] | None = None
    # The Linear(s) producing `logits` (int8 by default, for both weight-only precisions).
    lm_head: Literal["int8", "int4", "fp32"] | None = None
    # The activations of the quantized Linears: bf16 reaches the fast int4/int8 CPU kernels.
    compute: Literal["bf16", "fp32"] | None = None

    @field_validator("group_size")
    @classmethod
    def _int4_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        precision = (info.context or {}).get("precision")
        if precision not in (None, "int4-weights"):
            raise ValueError(f"applies to aoti:int4-weights only, not {precision}; remove it")
        return value

    @field_validator("lm_head", "compute")
    @classmethod
    def _weight_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        precision = (info.context or {}).get("precision")
        if precision is not None and precision not in WEIGHT_ONLY:
            raise ValueError(f"applies to aoti:int8-weights and aoti:int4-weights only, not {precision}; remove it")
        if value == "int4" and precision == "int8-weights":
            raise ValueError("'int4' needs aoti:int4-weights; choose 'int8' or 'fp32'")
        return value


class AOTITarget(Target):
    options_model = AOTIOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        import torch

        options: AOTIOptions = ctx.options
        info = Execution(execution_precision="fp32")
        program, fuse, qat = ctx.export.program(), False, None
        if ctx.precision == "int8":
            program, info, qat = _quantize(ctx, program)
            static = all(dim.static for dim in ctx.export.signature.dims.values())
            fuse = static if options.fuse_int8 is None else options.fuse_int8
        elif ctx.precision in WEIGHT_ONLY:
            module, info = weight_only(program, ctx.precision, options)
            program = _recapture(ctx, module)
        try:
            # Freezing (constant weights) is what lets Inductor swap q/dq pairs for int8 kernels;
            # it only applies with grad off.
            with torch._inductor.config.patch(freezing=fuse), torch.no_grad() if fuse else nullcontext():
                torch._inductor.aoti_compile_and_package(program, package_path=str(ctx.out_dir / MAIN))
        except Exception as err:
            raise TargetBuildError(
                f"AOTInductor compile failed: {error_line(err)}; "
                "check that g++ works, or build another target; --verbose shows the trace"
            ) from err
        if ctx.precision == "int8":
            kernels = int8_kernels(ctx.out_dir / MAIN)
            info.int8_kernel_calls = kernels
            if not kernels:
                info.execution_precision = "fp32 kernels on int8-rounded values (q/dq not fused)"
                info.notes.append(
                    "int8 kernels not fused: torch 2.13 AOTInductor's fused int8 kernels are wrong with dynamic "
                    "dims, so this package simulates int8 numerics at fp32 speed; make every dim static "
                    "for real int8 kernels, or use openvino:int8 / onnxruntime:int8"
                )
        if ctx.precision in WEIGHT_ONLY:
            names = ("_weight_int4pack_mm",) if ctx.precision == "int4-weights" else ("_weight_int8pack_mm",)
            info.quantization["kernel_references"] = kernel_calls(ctx.out_dir / MAIN, names)
        reference = program.module() if qat is not None else None  # QAT's trained int8 model
        return Artifact(
            "aoti", ctx.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info, qat=qat, reference=reference
        )

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        runner = TorchRunner(None, artifact.signature, options)  # threads set before loading
        runner.fn = torch._inductor.aoti_load_package(str(artifact.main))
        return runner


def _quantize(ctx: CompileContext, program: Any) -> tuple[Any, Execution, QatReport | None]:
    """PT2E with the x86 Inductor quantizer in its default configuration: calibrated after
    training, or trained with its fake quantizers in the loop (``[recovery] qat``)."""
    from kiln.quant import require_calibration
    from kiln.quant.pt2e import quantize
    from kiln.quant.qat import pt2e_qat, x86_quantizer

    calibration, notes = require_calibration(
        ctx.calibration, ctx.precision, f"{ctx.target.key} (pt2e)", ctx.calibration_guidance
    )
    qat = None
    if ctx.qat is not None:
        quantized, qat = pt2e_qat(ctx.qat, ctx.export.signature, calibration, x86_quantizer, QAT_X86)
    else:
        quantized = quantize(program, ctx.export.signature, calibration.samples, x86_quantizer(False))
    info = Execution(execution_precision="int8", notes=notes)
    info.quantization = {
        "tool": "torchao.quantization.pt2e (X86InductorQuantizer)" + (", quantization-aware training" if qat else ""),
        "weights": "int8 per-channel",
        "activations": "uint8",
        "calibration_samples": len(calibration.samples),
    }
    return quantized, info, qat


def int8_kernels(package: Path) -> int:
    """How many oneDNN int8 kernel calls the compiled package's generated code makes."""
    return kernel_calls(package, ("qconv", "qlinear"))


def kernel_calls(package: Path, names: tuple[str, ...]) -> int:
    """How often the compiled package's generated code names any of ``names``."""
    calls = 0
    with zipfile.ZipFile(package) as zf:
        for name in zf.namelist():
            if name.endswith((".cpp", ".h")):
                text = zf.read(name).decode(errors="ignore")
                calls += sum(text.count(n) for n in names)
    return calls


def _linears(gm: Any) -> tuple[list[Any], int]:
    """The graph's linear layers with a stored weight, as ``F.linear`` nodes: torchao's quantized
    tensors intercept ``F.linear``, while ``aten.linear`` called directly decomposes before they
    see it. ``addmm(bias, x, W)`` on a stored ``W`` (GPT-2's Conv1D) becomes ``F.linear(x, W.T,
    bias)`` on a transposed copy; returns the nodes and how many addmm were rewritten."""
    import torch

    found, rewritten = [], 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.linear.default:
            node.target = torch.nn.functional.linear
            if node.args[1].op == "get_attr":
                found.append(node)
        elif node.target is torch.ops.aten.addmm.default and not node.kwargs and node.args[2].op == "get_attr":
            bias, x, weight = node.args
            holder = torch.nn.Module()
            holder.weight = torch.nn.Parameter(_attr(gm, weight.target).detach().t().contiguous(), requires_grad=False)
            name = f"kiln_addmm_{rewritten}"
            gm.add_submodule(name, holder)
            with gm.graph.inserting_before(node):
                linear = gm.graph.call_function(
                    torch.nn.functional.linear, (x, gm.graph.get_attr(f"{name}.weight"), bias)
                )
            node.replace_all_uses_with(linear)
            gm.graph.erase_node(node)
            if not weight.users:  # the original [in, out] weight is not stored twice
                owner, attr = weight.target.rsplit(".", 1)
                gm.graph.erase_node(weight)
                if _uses(gm, weight.target) == 0:
                    delattr(gm.get_submodule(owner), attr)
            found.append(linear)
            rewritten += 1
    return found, rewritten


def _attr(gm: Any, fqn: str) -> Any:
    owner, attr = fqn.rsplit(".", 1)
    return getattr(gm.get_submodule(owner), attr)


def _group(k: int, wanted: int | None) -> int | None:
    """The int4 group for a layer of input width ``k``: ``wanted``, else the largest that divides."""
    if wanted is not None:
        return wanted if k % wanted == 0 else None
    return next((g for g in (128, 64, 32) if k % g == 0), None)


def lm_heads(gm: Any, output: str = "logits") -> set[Any]:
    """The linear node(s) whose result becomes the ``output`` of the module (through a few views)."""
    import torch
    from torch.utils._pytree import tree_unflatten

    flat = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    names = tree_unflatten(list(range(len(flat))), gm._out_spec)
    if not isinstance(names, dict) or output not in names:
        return set()
    frontier = [flat[names[output]]]
    for _ in range(4):
        heads = {n for n in frontier if n.target in (torch.nn.functional.linear, torch.ops.aten.linear.default)}
        if heads:
            return heads
        frontier = [arg for n in frontier if _op_name(n) in PASSTHROUGH for arg in n.all_input_nodes]
    return set()


def _op_name(node: Any) -> str:
    """``view`` for ``aten.view.default``; a Python function's own name; '' for non-calls."""
    if node.op != "call_function":
        return ""
    return getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")


def _untie(gm: Any, node: Any, index: int) -> str:
    """Give a linear whose weight is shared (a tied embedding) its own copy; returns its owner."""
    import torch

    weight = node.args[1]
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(_attr(gm, weight.target).detach().clone(), requires_grad=False)
    name = f"kiln_untied_{index}"
    gm.add_submodule(name, holder)
    with gm.graph.inserting_before(node):
        copy = gm.graph.get_attr(f"{name}.weight")
    node.replace_input_with(weight, copy)
    return name


def weight_only(program: Any, precision: str, options: AOTIOptions) -> tuple[Any, Execution]:
    """The captured program's module with torchao weight-only Linear weights, and what was done."""
    import torch

    from kiln.quant.pt2e import load_torchao

    ao = load_torchao("torchao.quantization", f"aoti:{precision}", INSTALL)
    int4 = load_torchao("torchao.prototype.quantization.int4", f"aoti:{precision}", INSTALL)
    gm = program.module()
    heads = lm_heads(gm)
    linears, rewritten = _linears(gm)
    body = "int4" if precision == "int4-weights" else "int8"
    compute = options.compute or "bf16"
    chosen, left, untied = _plan(gm, linears, heads, body, options)
    dtype = torch.bfloat16 if compute == "bf16" else torch.float32
    for nodes in chosen.values():
        for node in nodes:
            _cast_around(gm, node, dtype)
    gm.recompile()
    try:
        for (bits, group), nodes in chosen.items():
            # set_inductor_config=False: torchao's recommended settings are process-wide and GPU-minded.
            config = (
                int4.PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
                if bits == "int4"
                else ao.Int8WeightOnlyConfig(set_inductor_config=False)
            )
            owners = {n.args[1].target.rsplit(".", 1)[0] for n in nodes}
            ao.quantize_(gm, config, filter_fn=lambda _m, fqn, owners=owners: fqn in owners)
    except Exception as err:  # torchao raises plain assertions from its packing code
        raise TargetBuildError(f"torchao weight-only quantization failed: {error_line(err)}") from err
    counts = {f"{b} g{g}" if g else b: len(n) for (b, g), n in chosen.items()}
    done = sum(len(n) for (b, _), n in chosen.items() if b == body)
    reasons = "; ".join(sorted(set(left.values())))
    head = options.lm_head or "int8"
    info = Execution(
        execution_precision=f"{body} weights, {compute} compute" if done else f"fp32 (no Linear fit {body})"
    )
    info.quantization = {
        "tool": "torchao.quantization.quantize_",
        "weights": "int4 asymmetric in groups along K (Int4OpaqueTensor, CPU packing)"
        if body == "int4"
        else "int8 per-row symmetric",
        "compute": f"{compute} activations at the quantized Linears, the rest of the graph fp32",
        "kernels": KERNELS[(body, compute)],
        "linears": counts,
        "lm_head": {"policy": head, "weights": sorted(n.args[1].target for n in heads)},
        "embeddings": "fp32 (aten.embedding kept float: a lookup)",
        "left_float": left,
        "untied_copies": untied,
        "addmm_as_linear": rewritten,
    }
    info.notes.append(
        f"{precision}: {done} Linear(s) {body} on {compute} activations, lm head {head}, embeddings fp32"
        + (f", {len(left)} left fp32 ({reasons})" if left else "")
    )
    return gm, info


def _plan(
    gm: Any, linears: list[Any], heads: set[Any], body: str, options: AOTIOptions
) -> tuple[dict[tuple[str, int | None], list[Any]], dict[str, str], list[str]]:
    """Which Linear gets which bits and group, which stay fp32 and why; tied weights untied."""
    chosen: dict[tuple[str, int | None], list[Any]] = {}
    left, untied = {}, []
    for i, node in enumerate(linears):
        fqn = node.args[1].target
        bits = (options.lm_head or "int8") if node in heads else body
        k = _attr(gm, fqn).shape[1]
        group = _group(k, options.group_size) if bits == "int4" else None
        if bits == "fp32":
            left[fqn] = "lm head: options.lm_head = 'fp32'"
            continue
        if bits == "int4" and group is None:
            wanted = f"group_size {options.group_size}" if options.group_size else "32, 64 or 128"
            left[fqn] = f"K={k} is not a multiple of {wanted}"
            continue
        if bits == "int8" and (options.compute or "bf16") == "bf16" and k % 16:
            # Measured: torch 2.13's aten._weight_int8pack_mm segfaults on such a K (batch > 1).
            left[fqn] = f"K={k} is not a multiple of 16, which the bf16 int8 kernel needs"
            continue
        if not fqn.endswith(".weight") or _uses(gm, fqn) > 1:
            _untie(gm, node, i)
            untied.append(fqn)
        chosen.setdefault((bits, group), []).append(node)
    return chosen, left, untied


def _cast_around(gm: Any, node: Any, dtype: Any) -> None:
    """Run one Linear on ``dtype`` activations and weight (cast in, fp32 out; the bias added in
    fp32 after), so torchao quantizes a weight of that dtype and Inductor finds its fast kernel."""
    import operator

    import torch

    owner, attr = node.args[1].target.rsplit(".", 1)
    module = gm.get_submodule(owner)
    setattr(module, attr, torch.nn.Parameter(getattr(module, attr).detach().to(dtype), requires_grad=False))
    if dtype == torch.float32:
        return
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    graph = gm.graph
    with graph.inserting_before(node):
        cast_in = graph.call_method("to", (x, dtype))
    node.args, node.kwargs = (cast_in, weight), {}
    with graph.inserting_after(node):
        out = graph.call_method("to", (node, torch.float32))
    last = out
    if bias is not None:
        with graph.inserting_after(out):
            last = graph.call_function(operator.add, (out, bias))
    node.replace_all_uses_with(last, delete_user_cb=lambda user: user is not out)


def _uses(gm: Any, fqn: str) -> int:
    """How many graph nodes read the attribute ``fqn`` (a tied weight is read by several)."""
    return sum(len(n.users) for n in gm.graph.nodes if n.op == "get_attr" and n.target == fqn)


def _recapture(ctx: CompileContext, module: Any) -> Any:
    from kiln.capture.exporters.torch_export import capture, example_inputs

    return capture(module, example_inputs(ctx.export.signature, None), ctx.export.signature, strict=False)


TARGET = AOTITarget()
