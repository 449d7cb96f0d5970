"""PyTorch AOTInductor: the captured program compiled ahead of time into a ``.pt2`` package.

Toolchain: torch 2.13 ``torch._inductor.aoti_compile_and_package`` (needs g++); the package loads
with ``aoti_load_package`` and runs without the model's Python code. Dynamic dims of the capture
are kept. Compiling takes tens of seconds per model on 2 cores.
"""

from __future__ import annotations

from kiln.errors import TargetBuildError
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.eager import TorchRunner

MAIN = "model.pt2"


class AOTITarget(Target):
    def compile(self, ctx: CompileContext) -> Artifact:
        import torch

        program = ctx.export.program()
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(ctx.out_dir / MAIN))
        except Exception as err:
            raise TargetBuildError(
                f"AOTInductor compile failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}; "
                "check that g++ works, or build another target; --verbose shows the trace"
            ) from err
        return Artifact(
            "aoti", ctx.target.precision, ctx.out_dir, MAIN, ctx.export.signature, info={"execution_precision": "fp32"}
        )

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        runner = TorchRunner(None, artifact.signature, options)  # threads set before loading
        runner.fn = torch._inductor.aoti_load_package(str(artifact.main))
        return runner


TARGET = AOTITarget()
