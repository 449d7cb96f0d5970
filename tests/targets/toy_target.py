"""A toy target that lives only in the tests, registered the way a newcomer adds one: a module
(this file: ``TARGET``) plus one registry row. Load it as a pytest plugin (``-p
tests.targets.toy_target``) and the conformance suite picks it up with no other edit.

It "compiles" by keeping the captured program, and runs it in float64: a real backend in
miniature. Its ``broken`` precision fails to build on purpose and is declared a known issue, so
the suite's strict xfail is exercised too.
"""

from __future__ import annotations

import shutil
from typing import Any

from kiln.errors import TargetBuildError
from kiln.spec import Arrays
from kiln.targets import FP32, REGISTRY, Precision, TargetSpec
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target, TargetOptions
from kiln.tensors import to_arrays, to_tensors

MAIN = "toy.pt2"


class ToyOptions(TargetOptions):
    double: bool = True  # run in float64


class ToyRunner(Runner):
    def __init__(self, artifact: Artifact, double: bool) -> None:
        import torch

        self.sig, self.double = artifact.signature, double
        self.module = torch.export.load(str(artifact.main)).module()
        if double:
            self.module = self.module.double()

    def infer(self, inputs: Arrays) -> Arrays:
        import torch

        tensors = to_tensors(self.sig, inputs)
        if self.double:
            tensors = [t.double() if t.is_floating_point() else t for t in tensors]
        with torch.inference_mode():
            out = to_arrays(self.sig, self.module(*tensors))
        return {k: v.astype("float32") if v.dtype == "float64" else v for k, v in out.items()}


class ToyTarget(Target):
    options_model = ToyOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        if ctx.precision == "broken":
            raise TargetBuildError("the toy target's broken precision never builds")
        shutil.copyfile(ctx.export.program_path, ctx.out_dir / MAIN)
        info: dict[str, Any] = {"execution_precision": "fp64" if ctx.options.double else "fp32"}
        return Artifact("toy", ctx.precision, ctx.out_dir, MAIN, ctx.export.signature, info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        return ToyRunner(artifact, artifact.info.execution_precision == "fp64")  # what compile chose


TARGET = ToyTarget()

REGISTRY.setdefault(
    "toy",
    TargetSpec(
        "toy",
        __name__,
        "a test-only target: the captured program run in float64",
        "program",
        (Precision("fp32", FP32), Precision("broken", FP32)),
        known_issues=(("broken", "fails to build on purpose: exercises strict xfail"),),
    ),
)
