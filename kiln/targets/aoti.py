"""PyTorch AOTInductor: the captured program compiled ahead of time into a ``.pt2`` package.

Toolchain: torch 2.13 ``torch._inductor.aoti_compile_and_package`` (needs g++); the package loads
with ``aoti_load_package`` and runs without the model's Python code. Dynamic dims of the capture
are kept. Compiling takes tens of seconds per model on 2 cores.

``int8`` comes from PT2E (:mod:`kiln.quant.pt2e`, torchao's x86 Inductor quantizer). Inductor
fuses the quantize/dequantize pairs into oneDNN int8 kernels only with ``freezing`` on; measured
with torch 2.13 + torchao 0.18, those fused kernels return wrong results (top-1 10 % on digits)
when the program has a dynamic dim, and match the quantized model (max abs 0.009) when every dim
is static. So kiln fuses for all-static specs and otherwise compiles the int8-rounded program
unfused (int8 numerics, fp32 kernels: no int8 speed-up), and says so in the manifest;
``options.fuse_int8 = true`` forces fusion (the parity gate then tells whether it is right).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from kiln.errors import TargetBuildError
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.eager import TorchRunner

MAIN = "model.pt2"


class AOTITarget(Target):
    def compile(self, ctx: CompileContext) -> Artifact:
        import torch

        info: dict[str, Any] = {"execution_precision": "fp32"}
        program, fuse = ctx.export.program(), False
        if ctx.target.precision == "int8":
            from kiln.quant import option
            from kiln.quant.pt2e import quantize

            program, info = quantize(ctx)
            static = all(dim.static for dim in ctx.export.signature.dims.values())
            fuse = bool(option(ctx, "fuse_int8", static, (True, False)))
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
        if ctx.target.precision == "int8":
            from kiln.quant.pt2e import int8_kernels

            kernels = int8_kernels(ctx.out_dir / MAIN)
            info["int8_kernel_calls"] = kernels
            if not kernels:
                info["execution_precision"] = "fp32 kernels on int8-rounded values (q/dq not fused)"
                info["notes"].append(
                    "int8 kernels not fused: torch 2.13 AOTInductor's fused int8 kernels are wrong with dynamic "
                    "dims, so this package simulates int8 numerics at fp32 speed; make every dim static "
                    "for real int8 kernels, or use openvino:int8 / onnxruntime:int8"
                )
        return Artifact("aoti", ctx.target.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        runner = TorchRunner(None, artifact.signature, options)  # threads set before loading
        runner.fn = torch._inductor.aoti_load_package(str(artifact.main))
        return runner


TARGET = AOTITarget()
