"""PyTorch eager: the baseline. The artifact is the captured program, run op by op.

Toolchain: torch 2.13 (CPU build). The parity reference is the source model itself; this target
is what a deployment that runs the saved ``torch.export`` program in eager mode gets.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from kiln.spec import Signature
from kiln.targets.base import Arrays, Artifact, CompileContext, Runner, RunOptions, Target, named_outputs

MAIN = "program.pt2"


def canonical(a: np.ndarray) -> np.ndarray:
    """A C-ordered array with canonical strides on every axis, size-1 axes included.

    numpy calls an array C-contiguous even when a size-1 axis has an odd stride (a slice of a
    fancy-indexed ``x[:, None]``); AOTInductor kernels index with the strides they were compiled
    for and silently read garbage from such inputs, so they are copied into canonical form.
    """
    expected, step = [], a.itemsize
    for size in reversed(a.shape):
        expected.append(step)
        step *= size
    if a.flags.c_contiguous and tuple(reversed(expected)) == a.strides:
        return a
    return np.array(a, order="C", copy=True)


def to_tensors(sig: Signature, inputs: Arrays, device: str = "cpu") -> list[Any]:
    import torch

    tensors = []
    for spec in sig.inputs:
        t = torch.from_numpy(canonical(inputs[spec.name]))
        if spec.dtype == "bfloat16":
            t = t.to(torch.bfloat16)
        tensors.append(t.to(device))
    return tensors


def to_arrays(sig: Signature, out: Any) -> Arrays:
    import torch

    from kiln.exporters.torch_export import flatten_outputs

    _, values = flatten_outputs(out)
    arrays = [
        v.detach().float().cpu().numpy() if v.dtype == torch.bfloat16 else v.detach().cpu().numpy() for v in values
    ]
    return named_outputs(sig.outputs, arrays)


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


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
    def compile(self, ctx: CompileContext) -> Artifact:
        shutil.copyfile(ctx.export.program_path, ctx.out_dir / MAIN)
        return Artifact(
            "eager", ctx.target.precision, ctx.out_dir, MAIN, ctx.export.signature, info={"execution_precision": "fp32"}
        )

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        import torch

        module = torch.export.load(str(artifact.main)).module()
        return TorchRunner(module, artifact.signature, options)


TARGET = EagerTarget()
