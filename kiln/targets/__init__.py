"""The target registry: one literal table, checked without importing any toolchain.

Each :class:`TargetSpec` names the module that implements the target, the Python packages it
imports (looked up with ``importlib.util.find_spec``, never imported here), the pip extra that
installs them, the precisions it builds, and the hardware it needs to build and to run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from functools import cache

from kiln.errors import MissingDependencyError, UnavailableError, UnknownTargetError
from kiln.targets.base import Target


@dataclass(frozen=True)
class TargetSpec:
    name: str
    module: str
    summary: str
    precisions: tuple[str, ...]
    requires: tuple[str, ...] = ()
    extra: str | None = None
    build_needs: tuple[str, ...] = ()
    run_needs: tuple[str, ...] = ()
    # Precisions whose quantizer calibrates on data: refused before export without [calibration].
    calibrated: tuple[str, ...] = ()
    # Precisions that need one more package: precision -> (import name, pip extra).
    precision_requires: tuple[tuple[str, str, str], ...] = ()


REGISTRY: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "eager",
            "kiln.targets.eager",
            "PyTorch eager: the baseline every artifact is compared with",
            ("fp32",),
            requires=("torch",),
        ),
        TargetSpec(
            "aoti",
            "kiln.targets.aoti",
            "PyTorch AOTInductor: a compiled .pt2 package, loadable without Python model code",
            ("fp32", "int8"),
            requires=("torch",),
            build_needs=("cxx",),
            calibrated=("int8",),
            precision_requires=(("int8", "torchao", "aoti-int8"),),
        ),
        TargetSpec(
            "onnxruntime",
            "kiln.targets.onnxruntime",
            "ONNX Runtime, CPU execution provider, all graph optimizations",
            ("fp32", "fp16", "int8", "int8-dynamic"),
            requires=("onnxruntime",),
            extra="onnxruntime",
            calibrated=("int8",),
        ),
        TargetSpec(
            "openvino",
            "kiln.targets.openvino",
            "OpenVINO IR on the CPU plugin, execution precision always set",
            ("fp32", "fp16", "bf16", "int8", "int8-weights", "int4"),
            requires=("openvino",),
            extra="openvino",
            calibrated=("int8",),
        ),
        TargetSpec(
            "coreml",
            "kiln.targets.coreml",
            "Core ML .mlpackage (mlprogram) for Apple devices",
            ("fp16", "fp32", "int8", "int4", "palettize4", "palettize", "w8a8"),
            requires=("coremltools",),
            extra="coreml",
            build_needs=("coreml-converter",),
            run_needs=("macos",),
            calibrated=("w8a8",),
        ),
        TargetSpec(
            "tensorrt",
            "kiln.targets.tensorrt",
            "TensorRT 10 engine for NVIDIA GPUs: Q/DQ int8/fp8, 2:4 sparse, what it really ran recorded",
            ("fp32", "fp16", "bf16", "int8", "fp8"),
            requires=("tensorrt",),
            extra="tensorrt",
            build_needs=("cuda",),
            run_needs=("cuda",),
            calibrated=("int8", "fp8"),
        ),
    )
}


def _has_cuda() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


CAPABILITIES = {
    "cuda": (_has_cuda, "an NVIDIA GPU with its driver"),
    "macos": (lambda: platform.system() == "Darwin", "macOS (Apple silicon for the Neural Engine)"),
    "cxx": (lambda: shutil.which("g++") is not None or shutil.which("c++") is not None, "a C++ compiler (g++)"),
    # coremltools converts on Linux x86_64 and macOS; its wheels exist nowhere else.
    "coreml-converter": (
        lambda: platform.system() in ("Linux", "Darwin"),
        "Linux or macOS, where coremltools has wheels",
    ),
}


@dataclass(frozen=True)
class Availability:
    build: bool
    run: bool
    reason: str  # empty when both are available


@cache
def availability(name: str) -> Availability:
    """Whether a target can build and run here, and if not, what would make it so."""
    spec = REGISTRY[name]
    build_missing = [
        f"the Python package {mod!r} (pip install 'kiln[{spec.extra}]')"
        if spec.extra
        else f"the Python package {mod!r}"
        for mod in spec.requires
        if importlib.util.find_spec(mod) is None
    ]
    build_missing += [CAPABILITIES[need][1] for need in spec.build_needs if not CAPABILITIES[need][0]()]
    if build_missing:
        return Availability(False, False, "needs " + " and ".join(build_missing))
    run_missing = [CAPABILITIES[need][1] for need in spec.run_needs if not CAPABILITIES[need][0]()]
    if run_missing:
        return Availability(True, False, "convert and compress: yes; run: needs " + " and ".join(run_missing))
    return Availability(True, True, "")


def precision_missing(name: str, precision: str) -> str | None:
    """What a precision needs beyond its target's packages, when it is not installed."""
    for wanted, module, extra in REGISTRY[name].precision_requires:
        if wanted == precision and importlib.util.find_spec(module) is None:
            return f"{name}:{precision} needs the Python package {module!r} (pip install 'kiln[{extra}]')"
    return None


def check_target(name: str, precision: str) -> TargetSpec:
    """Validate a target x precision pair in a second, before any export starts."""
    if name not in REGISTRY:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    if precision not in spec.precisions:
        raise UnknownTargetError(
            f"target {name!r} has no precision {precision!r}; choose one of: {', '.join(spec.precisions)}"
        )
    return spec


def implementation(name: str) -> Target:
    """The target's implementation, imported lazily; toolchains are imported only when used."""
    return importlib.import_module(REGISTRY[name].module).TARGET


def require(name: str, run: bool = False) -> None:
    """Raise the precise exit-5 error when the target cannot build (or run) here."""
    avail = availability(name)
    if not avail.build or (run and not avail.run):
        error = MissingDependencyError if "Python package" in avail.reason and not avail.build else UnavailableError
        raise error(f"target {name!r} is unavailable here: {avail.reason}")


def get_target(name: str, need_run: bool = False) -> Target:
    """Import and instantiate a target, or say exactly what is missing (exit 5)."""
    require(name, run=need_run)
    return implementation(name)
