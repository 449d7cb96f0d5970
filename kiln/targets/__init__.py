"""The target registry: one literal table, the one place a target's policy lives.

Each :class:`TargetSpec` row names the module that implements the target, what it builds from
(the captured program or the ONNX), the Python packages it imports (import names looked up with
``importlib.util.find_spec``, never imported here, and the distribution names whose versions go
into cache keys and manifests), the pip extra that installs them, the hardware it needs to build
and to run, the loggers to quiet and the imports to block, and one :class:`Precision` row per
precision: its default parity tolerances, whether (and on how many samples) it calibrates, and
the packages it needs beyond the target's; which runtime versions load its artifacts and how a
model server loads them (:mod:`kiln.targets.shipping`). Its options model declares the quantizer
settings ``kiln tune`` searches. Adding a target is one module plus one row here plus one extra in
``pyproject.toml`` (see CONTRIBUTING.md). No module outside ``kiln/targets/`` asks which target it
holds (tests/test_target_names.py): it reads the row.

"Can it run here" has one answer, :func:`available_here`, that every command asks.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from kiln import hardware, results
from kiln.config import KilnConfig, TargetConfig, Tolerance
from kiln.errors import ConfigError, MissingDependencyError, UnavailableError, UnknownTargetError
from kiln.targets.rows import (
    BF16,
    CAPTURE,
    COREML_FP32,
    COREMLTOOLS,
    EXECUTORCH,
    EXECUTORCH_TORCHAO,
    FP16,
    FP32,
    INT4,
    INT8,
    INT8_WEIGHTS,
    LM_BARS,
    NNCF,
    NNCF_SAMPLES,
    ONNXRUNTIME,
    OPENVINO,
    ORT_SAMPLES,
    PT2E_SAMPLES,
    QAT_NNCF,
    QAT_QDQ,
    QAT_QDQ_SYMMETRIC,
    QAT_X86,
    QAT_XNNPACK,
    TENSORRT,
    TORCH,
    TORCHAO,
    Package,
)
from kiln.targets.shipping import DEFAULT_RULE, RuntimeRule, Serving

if TYPE_CHECKING:
    from kiln.manifest import Manifest
    from kiln.results import Fingerprint
    from kiln.targets.base import Target, TargetOptions

Consumes = Literal["program", "onnx"]


@dataclass(frozen=True)
class Precision:
    """One precision of one target. A precision that calibrates (``calibration`` is the
    quantizer's sample guidance) fixes its activation ranges from data, so it is refused before
    export without ``[calibration]``, and its parity is measured on real inputs only: seeded noise
    lies outside those ranges and saturates, which says nothing about the artifact."""

    name: str
    tolerance: Tolerance
    calibration: int | None = None
    needs: tuple[Package, ...] = ()
    build_needs: tuple[str, ...] = ()  # capabilities this precision needs to build, beyond the target's
    # Its quantization-aware training path ([recovery] qat = true), in words; None: it has none.
    qat: str | None = None

    @property
    def calibrates(self) -> bool:
        return self.calibration is not None

    @property
    def quantized(self) -> bool:
        """Integer or 8-bit float formats: what post-training quantization or QAT produces."""
        return self.name not in ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    module: str
    summary: str
    consumes: Consumes
    precisions: tuple[Precision, ...]
    packages: tuple[Package, ...] = ()
    build_needs: tuple[str, ...] = ()
    run_needs: tuple[str, ...] = ()
    # Which runtime versions load its artifacts (kiln verify), and how a model server loads them
    # (kiln package --repository), or, as a phrase, why no server does.
    runtime: RuntimeRule = DEFAULT_RULE
    serving: Serving | str = "an artifact no Triton or OVMS backend loads"
    blocked_imports: tuple[str, ...] = ()  # optional modules kiln makes fail to import (telemetry)
    # Precisions known not to conform yet, with why: the conformance suite expects them to fail
    # (strict xfail), so a fix shows up as an unexpected pass to be removed from here.
    known_issues: tuple[tuple[str, str], ...] = ()
    # The same for a causal LM's step graph (tests/targets/test_conformance_lm.py).
    lm_known_issues: tuple[tuple[str, str], ...] = ()
    # The profiler `kiln bench --profile` reads this target's artifacts with (kiln.bench.profile):
    # perf-counts, ort-trace, torch-program, torch-aoti or etdump; None: not profiled.
    profiler: str | None = None

    @property
    def precision_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.precisions)

    def precision(self, name: str) -> Precision:
        for p in self.precisions:
            if p.name == name:
                return p
        raise UnknownTargetError(
            f"target {self.name!r} has no precision {name!r}; choose one of: {', '.join(self.precision_names)}"
        )

    def packages_for(self, precision: str) -> tuple[Package, ...]:
        return self.packages + self.precision(precision).needs

    def dists(self, precision: str | None = None) -> tuple[str, ...]:
        """Distribution names whose versions identify what built an artifact (cache key, manifest)."""
        packages = self.packages_for(precision) if precision else self.packages
        return tuple(d for p in packages for d in p.dists)


REGISTRY: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "eager",
            "kiln.targets.eager",
            "PyTorch eager: the baseline every artifact is compared with",
            "program",
            (Precision("fp32", FP32),),
            packages=(TORCH,),
            runtime=RuntimeRule(
                "newer-same-major",
                "a saved torch.export program carries its serialization version and later torch releases read it",
            ),
            serving="a PyTorch program that only kiln's eager runner executes",
            profiler="torch-program",
        ),
        TargetSpec(
            "aoti",
            "kiln.targets.aoti",
            "PyTorch AOTInductor: a compiled .pt2 package, loadable without Python model code",
            "program",
            (
                Precision("fp32", FP32),
                Precision("int8", INT8, PT2E_SAMPLES, needs=(TORCHAO,), qat=QAT_X86),
                Precision("int8-weights", INT8_WEIGHTS, needs=(TORCHAO,)),
                Precision("int4-weights", INT4, needs=(TORCHAO,)),
            ),
            packages=(TORCH,),
            build_needs=("cxx",),
            runtime=RuntimeRule(
                "exact",
                "an AOTInductor package is C++ compiled against the libtorch headers and ABI of the torch that "
                "built it; another release can fail to load it or crash in it",
            ),
            serving="an AOTInductor .pt2 package that no Triton or OVMS backend loads",
            profiler="torch-aoti",
        ),
        TargetSpec(
            "onnxruntime",
            "kiln.targets.onnxruntime",
            "ONNX Runtime, CPU execution provider, all graph optimizations",
            "onnx",
            (
                Precision("fp32", FP32),
                Precision("fp16", FP16),
                Precision("int8", INT8, ORT_SAMPLES, qat=QAT_QDQ),
                Precision("int8-dynamic", INT8),
                Precision("int4", INT4),
            ),
            packages=(ONNXRUNTIME,),
            runtime=RuntimeRule(
                "newer-same-major", "ONNX Runtime runs every opset it shipped with, and later releases only add opsets"
            ),
            serving=Serving("onnxruntime", "ONNX", "model.onnx", "onnx", ovms=True),
            profiler="ort-trace",
        ),
        TargetSpec(
            "openvino",
            "kiln.targets.openvino",
            "OpenVINO IR on the CPU plugin, execution precision always set; causal LMs as a stateful IR",
            "onnx",
            (
                Precision("fp32", FP32),
                Precision("fp16", FP16),
                Precision("bf16", BF16),
                Precision("int8", INT8, NNCF_SAMPLES, needs=(NNCF,), qat=QAT_NNCF),
                Precision("int8-weights", INT8_WEIGHTS, needs=(NNCF,)),
                Precision("int4", INT4, needs=(NNCF,)),
            ),
            packages=(OPENVINO,),
            lm_known_issues=(
                (
                    "bf16",
                    "refused for causal LMs on CPUs where OpenVINO 2026.4.1's plugin dies with SIGFPE compiling the "
                    "stateful IR at bf16 (seen on an Intel Xeon with AMX at 1 thread; kiln probes in a child process)",
                ),
            ),
            runtime=RuntimeRule(
                "newer-same-major",
                "OpenVINO reads IR written by its own or an earlier release of the same year's line; an older "
                "runtime may not know an operator set",
            ),
            serving=Serving(
                "openvino",
                "OpenVINO IR",
                "model.xml",
                "ir",
                ovms=True,
                pads_batches=True,
                stateful_refusal=(
                    "a stateful OpenVINO IR (a causal LM's KV cache lives in the IR's state and needs a sequence "
                    "batcher); ship the onnxruntime artifact, whose step graph takes the cache as inputs"
                ),
            ),
            # OpenVINO and NNCF send usage data through this optional package and fall back to a
            # silent stub when it cannot be imported: a build tool does not phone home.
            blocked_imports=("openvino_telemetry",),
            profiler="perf-counts",
        ),
        TargetSpec(
            "coreml",
            "kiln.targets.coreml",
            "Core ML .mlpackage (mlprogram) for Apple devices; causal LMs keep their KV cache as Core ML state",
            "program",
            (
                Precision("fp16", FP16),
                Precision("fp32", COREML_FP32),
                Precision("int8", INT8),
                Precision("int4", INT4),
                Precision("palettize4", INT4),
                Precision("palettize", INT4),
                # Activation calibration runs Core ML predictions: macOS only.
                Precision("w8a8", INT8, ORT_SAMPLES, build_needs=("macos",)),
            ),
            packages=(COREMLTOOLS,),
            lm_known_issues=(
                (
                    "int4",
                    "per-channel 4-bit weights (no groups) on the 128-wide conformance LM: teacher-forced "
                    "next-token agreement 0.875 < 0.90 (palettize4 passes)",
                ),
            ),
            build_needs=("coreml-converter",),
            run_needs=("macos",),
            runtime=RuntimeRule(
                "newer-same-major", "coremltools reads model specifications of its own and earlier versions"
            ),
            serving="a Core ML package, which runs on Apple devices only",
        ),
        TargetSpec(
            "tensorrt",
            "kiln.targets.tensorrt",
            "TensorRT 10 engine for NVIDIA GPUs: Q/DQ int8/fp8, 2:4 sparse, what it really ran recorded",
            "onnx",
            (
                Precision("fp32", FP32),
                Precision("fp16", FP16),
                Precision("bf16", BF16),
                Precision("int8", INT8, ORT_SAMPLES, qat=QAT_QDQ_SYMMETRIC),
                Precision("fp8", Tolerance(min_cosine=0.98, min_top1=0.95), ORT_SAMPLES),
            ),
            packages=(TENSORRT,),
            build_needs=("cuda",),
            run_needs=("cuda",),
            runtime=RuntimeRule(
                "exact",
                "a serialized TensorRT engine deserializes only in the TensorRT version that built it, and its "
                "kernels were chosen for one GPU model",
                gpu_bound=True,
            ),
            serving=Serving(
                "tensorrt", "TensorRT plans", "model.plan", "source-onnx", platform="tensorrt_plan", gpu=True
            ),
        ),
        TargetSpec(
            "executorch",
            "kiln.targets.executorch",
            "ExecuTorch .pte for edge devices: XNNPACK on CPUs (runs here); Core ML and Vulkan delegates lowered",
            "program",
            (
                Precision("fp32", FP32),
                Precision("int8", INT8, PT2E_SAMPLES, needs=(EXECUTORCH_TORCHAO,), qat=QAT_XNNPACK),
                Precision("int8-dynamic", INT8, needs=(EXECUTORCH_TORCHAO,)),
                Precision("int4-dynamic", INT4, needs=(EXECUTORCH_TORCHAO,)),
            ),
            packages=(TORCH, EXECUTORCH),
            runtime=RuntimeRule(
                "same-minor",
                "the .pte program's flatbuffer schema and kernel registry change between minor releases",
                package="executorch",
            ),
            serving="an ExecuTorch .pte program for on-device runtimes",
            profiler="etdump",
        ),
    )
}

# The target every artifact is compared with: bench measures it first, tune ranks against it.
BASELINE = results.BASELINE  # the target every artifact is gated and timed against


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
# Capabilities a test needs become its pytest marker (tests/conftest.py).
MARKERS = {"cuda": "gpu", "macos": "macos"}


@dataclass(frozen=True)
class Availability:
    """Can it build here, can it run here, and if not, why: the package to install (``kiln[extra]``)
    or the hardware it needs, in words (``an NVIDIA GPU with its driver``)."""

    build: bool
    run: bool
    reason: str  # empty when both are available
    missing_package: bool = False  # only pip packages block it (exit 5, names the extra)

    def error(self, name: str, run: bool = False) -> UnavailableError | None:
        """The precise exit-5 error when the target cannot build (``run``: its artifact cannot
        run) here, else ``None``."""
        if self.run if run else self.build:
            return None
        kind = MissingDependencyError if self.missing_package else UnavailableError
        return kind(f"target {name!r} is unavailable here: {self.reason}")

    def require(self, name: str, run: bool = False) -> None:
        if (error := self.error(name, run)) is not None:
            raise error


@cache
def availability(name: str, precision: str | None = None) -> Availability:
    """The registry row's part of :func:`available_here`: whether this machine has the packages
    and hardware the row names for a target (at a precision). A listing of the registry (``kiln
    targets``, test markers) asks this; a command about one configured target asks
    :func:`available_here`."""
    spec = REGISTRY[name]
    packages = spec.packages_for(precision) if precision else spec.packages
    build_needs = spec.build_needs + (spec.precision(precision).build_needs if precision else ())
    missing = [p.install_hint for p in packages if not p.installed]
    hardware = [CAPABILITIES[n][1] for n in dict.fromkeys(build_needs) if not CAPABILITIES[n][0]()]
    if missing or hardware:
        # A package is what blocks it only where the hardware is there: else installing it is no fix.
        only_packages = bool(missing) and not hardware
        return Availability(False, False, "needs " + " and ".join(missing + hardware), missing_package=only_packages)
    run_missing = [CAPABILITIES[need][1] for need in spec.run_needs if not CAPABILITIES[need][0]()]
    if run_missing:
        return Availability(True, False, "convert and compress: yes; run: needs " + " and ".join(run_missing))
    return Availability(True, True, "")


def available_here(target: TargetConfig, options: TargetOptions | None = None) -> Availability:
    """Can it run here: the one answer every command asks (build plan, bench, tune, verify,
    serve, generate). Whether this target x precision x options builds here, whether an artifact
    of it runs here, and if not, why. The row's packages and hardware first, then what the target
    says its options need to run beyond them (a delegate only another device runs:
    :meth:`Target.run_blocker`). Running a built artifact needs the target's packages, not what
    its precision needed to build (nncf, torchao). ``options``: the target's options, validated
    already (else they are validated here)."""
    built = availability(target.name, target.precision)
    runs = availability(target.name)
    if not built.build:
        return replace(built, run=runs.run)
    if not runs.run:
        return runs
    blocker = implementation(target.name).run_blocker(options if options is not None else target_options(target))
    return Availability(True, False, blocker) if blocker else runs


def check_target(name: str, precision: str) -> TargetSpec:
    """Validate a target x precision pair in a second, before any export starts."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownTargetError(f"unknown target {name!r}{hint}; choose one of: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    spec.precision(precision)
    return spec


def implementation(name: str) -> Target:
    """The target's implementation, imported lazily; toolchains are imported only when used."""
    return importlib.import_module(REGISTRY[name].module).TARGET


def built_with(manifest: Manifest) -> TargetConfig:
    """The target x precision x options an artifact was built with, as its manifest records them."""
    return TargetConfig(name=manifest.target, precision=manifest.precision, options=manifest.options)


def loader(manifest: Manifest) -> Target:
    """The implementation that loads this artifact, once :func:`available_here` says it runs here
    (else exit 5 with its reason)."""
    available_here(built_with(manifest)).require(manifest.key, run=True)
    return implementation(manifest.target)


def target_options(target: TargetConfig) -> TargetOptions:
    """A target's ``options`` validated against its own typed model: one line naming the key."""
    model = implementation(target.name).options_model
    try:
        return model.model_validate(target.options, context={"precision": target.precision})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        where = f"[[target]] {target.name}:{target.precision} options"
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(model.model_fields) or "none"
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}known keys: {known}") from err
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{message}; fix it and run again") from err


def check_config(config: KilnConfig, source_kind: str) -> dict[str, TargetOptions]:
    """Every target x precision is known, fits the source, has its data, and its options are
    valid: all before any export starts (what is *installed* is checked per target, in the plan).
    Returns each target's validated options, by target key."""
    checked: dict[str, TargetOptions] = {}
    for target in config.target:
        spec = check_target(target.name, target.precision)
        precision = spec.precision(target.precision)
        if spec.consumes == "program" and source_kind == "onnx":
            raise ConfigError(
                f"{target.name} builds from the captured torch.export program and the source "
                f"{config.model.source!r} is an ONNX file; use a Python, .pt2 or hf: source, or an ONNX target "
                f"({', '.join(n for n, s in REGISTRY.items() if s.consumes == 'onnx')})"
            )
        if target.prune is not None and source_kind == "onnx":
            raise ConfigError(
                f"{target.key}: pruning needs a PyTorch model and {config.model.source!r} is an ONNX file; "
                "use a Python, .pt2 or hf: source, or drop prune"
            )
        if target.member is not None:
            members = config.model.ensemble.member_names() if config.model.ensemble else []
            if target.member not in members:
                raise ConfigError(
                    f"{target.name}:{target.precision} names member {target.member!r}, but "
                    + (f"the ensemble's members are {members}" if members else "[model] is no ensemble")
                    + "; use a member's name or drop member"
                )
            if target.prune is not None:
                raise ConfigError(
                    f"{target.key}: a member row builds the member as it is; prune the ensemble's row instead"
                )
        if precision.calibrates and config.calibration is None:
            raise ConfigError(
                f"{target.name}:{target.precision} calibrates on data and the config has no [calibration]; "
                "add [calibration] source = 'data.npz' | 'folder/' | 'file.py:fn' (kiln never calibrates "
                "on random inputs), or pick a weight-only or dynamic precision"
            )
        checked[target.key] = target_options(target)
    if config.recovery is not None and config.recovery.qat and source_kind == "onnx":
        raise ConfigError(
            f"[recovery] qat = true trains the PyTorch model, and {config.model.source!r} is an ONNX file; "
            "use a Python, .pt2 or hf: source, or set qat = false"
        )
    _check_qat(config)
    return checked


def qat_applies(config: KilnConfig, target: TargetConfig) -> bool:
    """Whether this target trains with fake quantization in the loop: ``[recovery] qat`` is on
    and its precision has a QAT path (float precisions build as they always do)."""
    if config.recovery is None or not config.recovery.qat:
        return False
    return check_target(target.name, target.precision).precision(target.precision).qat is not None


def _check_qat(config: KilnConfig) -> None:
    """``[recovery] qat = true``: every quantized target x precision must have a QAT path, and
    QAT needs a PyTorch model and a quantized target to apply to."""
    if config.recovery is None or not config.recovery.qat:
        return
    quantized = [t for t in config.target if REGISTRY[t.name].precision(t.precision).quantized]
    for target in quantized:
        spec = REGISTRY[target.name]
        if spec.precision(target.precision).qat is None:
            paths = [f"{n}:{p.name}" for n, s in REGISTRY.items() for p in s.precisions if p.qat]
            raise ConfigError(
                f"{target.name}:{target.precision} has no quantization-aware training path, and [recovery] qat = true; "
                f"QAT builds {', '.join(paths)}: drop this target from the config or set qat = false"
            )
    if not quantized:
        raise ConfigError(
            "[recovery] qat = true, but no target quantizes; add an int8 target (kiln targets lists the QAT paths) "
            "or set qat = false"
        )


def tolerance_for(target: TargetConfig, generative: bool = False) -> Tolerance:
    """The precision's default tolerances (a causal LM's where LM_BARS has them) with the
    config's overrides applied."""
    base = check_target(target.name, target.precision).precision(target.precision).tolerance
    if generative:
        base = next((lm for own, lm in LM_BARS if own == base), base)
    if target.tolerance is None:
        return base
    return base.model_copy(update=target.tolerance.model_dump(exclude_unset=True))


def toolchains() -> tuple[Package, ...]:
    """Every toolchain kiln imports: capture's, then each target's and each precision's, once
    per import name. The lists of toolchains elsewhere (the import contracts in pyproject.toml,
    tests/test_imports.py) are this one (tests/test_toolchain_lists.py)."""
    every = [*CAPTURE]
    for spec in REGISTRY.values():
        every += [*spec.packages, *(p for precision in spec.precisions for p in precision.needs)]
    first: dict[str, Package] = {}
    for package in every:
        first.setdefault(package.module, package)
    return tuple(first.values())


def toolchain_modules() -> tuple[str, ...]:
    """Import names of every toolchain: what ``kiln --help`` and the registry must not import."""
    return tuple(p.module for p in toolchains())


def toolchain_dists() -> tuple[str, ...]:
    """Every distribution a toolchain is installed as: what ``kiln doctor`` lists and every
    hardware fingerprint records."""
    return tuple(dict.fromkeys(d for p in toolchains() for d in p.dists))


def quiet_loggers() -> tuple[str, ...]:
    """Every toolchain's loggers that talk about their own internals per op or per pass."""
    return tuple(dict.fromkeys(name for p in toolchains() for name in p.loggers))


def quiet_toolchains() -> None:
    """Quiet every toolchain's chatty loggers and block the imports rows ask to block. Toolchains
    warn about their own internals on every call; a user can act on none of it (``--verbose``
    keeps it all)."""
    for name in quiet_loggers():
        logging.getLogger(name).setLevel(logging.ERROR)
    from kiln.targets import base

    base.QUIET = True
    block_imports()


def block_imports() -> None:
    """Make the optional modules rows name fail to import, in this process (telemetry)."""
    for spec in REGISTRY.values():
        for name in spec.blocked_imports:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def fingerprint() -> Fingerprint:
    """This machine's fingerprint, with the version of every toolchain."""
    return hardware.fingerprint(toolchain_dists())
