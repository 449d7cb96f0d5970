"""PyTorch eager: the baseline. The artifact is the captured program, run op by op.

Toolchain: torch 2.13 (CPU build). The parity reference is the source model itself; this target
is what a deployment that runs the saved ``torch.export`` program in eager mode gets.
"""

from __future__ import annotations

import shutil
from typing import Any

from kiln.manifest import Execution
from kiln.spec import Arrays, Signature
from kiln.targets.base import Artifact, CompileContext, NoOptions, Runner, RunOptions, Target
from kiln.tensors import set_threads, to_arrays, to_tensors

MAIN = "program.pt2"


class TorchRunner(Runner):
    """Runs any callable that takes positional tensors and returns the model's output tree."""

    def __init__(self, fn: Any, sig: Signature, options: RunOptions, device: str = "cpu") -> None:
        self.fn, self.sig, self.device = fn, sig, device
        self.threads = set_threads(options.threads)

    def infer(self, inputs: Arrays) -> Arrays:
        import torch

        with torch.inference_mode():
            return to_arrays(self.sig, self.fn(*to_tensors(self.sig, inputs, self.device)))

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def info(self) -> dict[str, Any]:
        return {"threads": self.threads, "device": self.device}


class EagerTarget(Target):
    options_model = NoOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        shutil.copyfile(ctx.export.program_path, ctx.out_dir / MAIN)
        info = Execution(execution_precision="fp32")
        return Artifact("eager", ctx.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        module = torch.export.load(str(artifact.main)).module()
        return TorchRunner(module, artifact.signature, options)


TARGET = EagerTarget()
