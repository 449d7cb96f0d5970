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
"""

from __future__ import annotations

import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from kiln.errors import TargetBuildError
from kiln.manifest import Execution
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target, TargetOptions
from kiln.targets.eager import TorchRunner

MAIN = "model.pt2"
QUANTIZER = "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"
INSTALL = "pip install 'kiln[aoti-int8]' -c constraints.txt"


class AOTIOptions(TargetOptions):
    # Fuse int8 q/dq pairs into oneDNN kernels; None: only when every dim is static (see above).
    fuse_int8: bool | None = None


class AOTITarget(Target):
    options_model = AOTIOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        import torch

        options: AOTIOptions = ctx.options
        info = Execution(execution_precision="fp32")
        program, fuse = ctx.export.program(), False
        if ctx.precision == "int8":
            program, info = _quantize(ctx, program)
            static = all(dim.static for dim in ctx.export.signature.dims.values())
            fuse = static if options.fuse_int8 is None else options.fuse_int8
        try:
            # Freezing (constant weights) is what lets Inductor swap q/dq pairs for int8 kernels;
            # it only applies with grad off.
            with torch._inductor.config.patch(freezing=fuse), torch.no_grad() if fuse else nullcontext():
                torch._inductor.aoti_compile_and_package(program, package_path=str(ctx.out_dir / MAIN))
        except Exception as err:
            raise TargetBuildError(
                f"AOTInductor compile failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}; "
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
        return Artifact("aoti", ctx.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        runner = TorchRunner(None, artifact.signature, options)  # threads set before loading
        runner.fn = torch._inductor.aoti_load_package(str(artifact.main))
        return runner


def _quantize(ctx: CompileContext, program: Any) -> tuple[Any, Execution]:
    """PT2E with the x86 Inductor quantizer in its default configuration."""
    from kiln.quant import require_calibration
    from kiln.quant.pt2e import load_torchao, quantize

    calibration, notes = require_calibration(
        ctx.calibration, ctx.precision, f"{ctx.target.key} (pt2e)", ctx.calibration_guidance
    )
    x86 = load_torchao(QUANTIZER, f"aoti:{ctx.precision}", INSTALL)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    quantized = quantize(program, ctx.export.signature, calibration.samples, quantizer)
    info = Execution(execution_precision="int8", notes=notes)
    info.quantization = {
        "tool": "torchao.quantization.pt2e (X86InductorQuantizer)",
        "weights": "int8 per-channel",
        "activations": "uint8",
        "calibration_samples": len(calibration.samples),
    }
    return quantized, info


def int8_kernels(package: Path) -> int:
    """How many oneDNN int8 kernel calls the compiled package's generated code makes."""
    calls = 0
    with zipfile.ZipFile(package) as zf:
        for name in zf.namelist():
            if name.endswith((".cpp", ".wrapper.cpp", ".h")):
                text = zf.read(name).decode(errors="ignore")
                calls += text.count("qconv") + text.count("qlinear")
    return calls


TARGET = AOTITarget()
