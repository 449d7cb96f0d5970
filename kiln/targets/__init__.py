"""The target registry: one literal table, the one place a target's policy lives.

Each :class:`TargetSpec` row names the module that implements the target, what it builds from
(the captured program or the ONNX), the Python packages it imports (import names looked up with
``importlib.util.find_spec``, never imported here, and the distribution names whose versions go
into cache keys and manifests), the pip extra that installs them, the hardware it needs to build
and to run, the loggers to quiet and the imports to block, and one :class:`Precision` row per
precision: its default parity tolerances, whether (and on how many samples) it calibrates, and
the packages it needs beyond the target's. Adding a target is one module plus one row here plus
one extra in ``pyproject.toml`` (see CONTRIBUTING.md).
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
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from kiln import hardware
from kiln.config import KilnConfig, TargetConfig, Tolerance
from kiln.errors import ConfigError, MissingDependencyError, UnavailableError, UnknownTargetError

if TYPE_CHECKING:
    from kiln.results import Fingerprint
    from kiln.targets.base import Target, TargetOptions

Consumes = Literal["program", "onnx"]


@dataclass(frozen=True)
class Package:
    """A Python package a target imports: its import name, the distributions that provide it
    (the first one installed is the version recorded), and the pip extra that installs it."""

    module: str
    dists: tuple[str, ...]
    extra: str | None = None

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    @property
    def install_hint(self) -> str:
        how = f"pip install 'kiln[{self.extra}]' -c constraints.txt" if self.extra else f"pip install {self.dists[0]}"
        return f"the Python package {self.module!r} ({how})"


TORCH = Package("torch", ("torch",))
ONNXRUNTIME = Package("onnxruntime", ("onnxruntime",), "onnxruntime")
OPENVINO = Package("openvino", ("openvino",), "openvino")
NNCF = Package("nncf", ("nncf",), "openvino")
TORCHAO = Package("torchao", ("torchao",), "aoti-int8")
COREMLTOOLS = Package("coremltools", ("coremltools",), "coreml")
TENSORRT = Package("tensorrt", ("tensorrt-cu12", "tensorrt-cu13", "tensorrt"), "tensorrt")
EXECUTORCH = Package("executorch", ("executorch",), "executorch")
EXECUTORCH_TORCHAO = Package("torchao", ("torchao",), "executorch")  # kiln[executorch] installs it too

# Default parity tolerances by numeric format (``None`` figures are not gated).
# A causal LM's generation gate reads min_cosine (per-step logits), min_top1 (teacher-forced next
# tokens), exact_tokens and max_perplexity_increase (relative to eager's held-out perplexity).
FP32 = Tolerance(max_rel=1e-4, min_cosine=0.99999, exact_tokens=True, max_perplexity_increase=0.001)
FP16 = Tolerance(max_rel=3e-2, min_cosine=0.999, min_top1=0.98, max_perplexity_increase=0.01)
BF16 = Tolerance(max_rel=5e-2, min_cosine=0.999, min_top1=0.98, max_perplexity_increase=0.02)
INT8 = Tolerance(min_cosine=0.98, min_top1=0.95, max_perplexity_increase=0.05)
# Weight-only int8 (activations stay float): measured cosine >= 0.99999 on a tiny attention block.
INT8_WEIGHTS = Tolerance(min_cosine=0.99, min_top1=0.98, max_perplexity_increase=0.02)
INT4 = Tolerance(min_cosine=0.95, min_top1=0.90, max_perplexity_increase=0.10)

# Quantization-aware training paths ([recovery] qat = true), each the target's own quantizer with
# fake quantization in the loop (see kiln.quant.qat).
QAT_X86 = "PT2E prepare_qat_pt2e with X86InductorQuantizer (the quantizer aoti:int8 uses)"
QAT_XNNPACK = "PT2E prepare_qat_pt2e with XNNPACKQuantizer (the quantizer executorch:int8 uses)"
QAT_QDQ = "PT2E QAT (X86InductorQuantizer: uint8 activations, int8 per-channel weights), exported as a Q/DQ ONNX"
QAT_QDQ_SYMMETRIC = "PT2E QAT with symmetric int8 activations (as TensorRT needs), exported as a Q/DQ ONNX"
QAT_NNCF = "NNCF's PyTorch QAT (nncf.quantize on the module, fine-tuned, then ov.convert_model)"

# How many calibration samples each quantizer's documentation asks for: ONNX Runtime's
# calibrators and PyTorch's PT2E observers see stable ranges from about 100; NNCF's default
# ``subset_size`` is 300.
ORT_SAMPLES, PT2E_SAMPLES, NNCF_SAMPLES = 100, 100, 300


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
    quiet_loggers: tuple[str, ...] = ()  # toolchain loggers that talk per op or per pass
    blocked_imports: tuple[str, ...] = ()  # optional modules kiln makes fail to import (telemetry)
    # Precisions known not to conform yet, with why: the conformance suite expects them to fail
    # (strict xfail), so a fix shows up as an unexpected pass to be removed from here.
    known_issues: tuple[tuple[str, str], ...] = ()
    # The same for a causal LM's step graph (tests/targets/test_conformance_lm.py).
    lm_known_issues: tuple[tuple[str, str], ...] = ()

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
            quiet_loggers=("torch", "torch.utils._pytree", "torchao"),
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
                    "refused for causal LMs: OpenVINO 2026.4.1 dies with SIGFPE compiling the stateful IR at bf16",
                ),
            ),
            quiet_loggers=("nncf",),
            # OpenVINO and NNCF send usage data through this optional package and fall back to a
            # silent stub when it cannot be imported: a build tool does not phone home.
            blocked_imports=("openvino_telemetry",),
        ),
        TargetSpec(
            "coreml",
            "kiln.targets.coreml",
            "Core ML .mlpackage (mlprogram) for Apple devices; causal LMs keep their KV cache as Core ML state",
            "program",
            (
                Precision("fp16", FP16),
                Precision("fp32", FP32),
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
            quiet_loggers=("coremltools",),
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
            lm_known_issues=tuple(
                (p, "refused for causal LMs: the KV-cache step graph aborts the ExecuTorch 1.5.1 runtime (SIGABRT)")
                for p in ("fp32", "int8-dynamic", "int4-dynamic")
            ),
            quiet_loggers=("executorch", "torchao"),
        ),
    )
}

# Loggers that talk about their own internals whatever the target (exporters, hf sources).
COMMON_QUIET = ("torch", "torch.utils._pytree", "onnxscript", "transformers")


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
    build: bool
    run: bool
    reason: str  # empty when both are available
    missing_package: bool = False  # the build is blocked by a pip package (exit 5, names the extra)

    def error(self, name: str, run: bool = False) -> UnavailableError | None:
        """The precise exit-5 error when the target cannot build (or run) here, else ``None``."""
        if self.build and (self.run or not run):
            return None
        kind = MissingDependencyError if self.missing_package and not self.build else UnavailableError
        return kind(f"target {name!r} is unavailable here: {self.reason}")

    def require(self, name: str, run: bool = False) -> None:
        if (error := self.error(name, run)) is not None:
            raise error


@cache
def availability(name: str, precision: str | None = None) -> Availability:
    """Whether a target (at a precision) can build and run here, and if not, what would make it so."""
    spec = REGISTRY[name]
    packages = spec.packages_for(precision) if precision else spec.packages
    build_needs = spec.build_needs + (spec.precision(precision).build_needs if precision else ())
    missing = [p.install_hint for p in packages if not p.installed]
    build_missing = missing + [CAPABILITIES[n][1] for n in dict.fromkeys(build_needs) if not CAPABILITIES[n][0]()]
    if build_missing:
        return Availability(False, False, "needs " + " and ".join(build_missing), missing_package=bool(missing))
    run_missing = [CAPABILITIES[need][1] for need in spec.run_needs if not CAPABILITIES[need][0]()]
    if run_missing:
        return Availability(True, False, "convert and compress: yes; run: needs " + " and ".join(run_missing))
    return Availability(True, True, "")


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


def get_target(name: str, need_run: bool = False) -> Target:
    """Import and instantiate a target, or say exactly what is missing (exit 5)."""
    availability(name).require(name, run=need_run)
    return implementation(name)


def run_blocked(target: TargetConfig) -> str | None:
    """Why an artifact of this target, precision and options cannot run here, or ``None``: the
    registry row's availability, then what the target says its options need beyond it (a
    delegate only another device runs: :meth:`Target.run_blocker`). Running a built artifact
    needs the target's packages, not what its precision needed to build (nncf, torchao)."""
    avail = availability(target.name)
    if not avail.run:
        return avail.reason
    return implementation(target.name).run_blocker(target_options(target))


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


def check_config(config: KilnConfig, source_kind: str) -> None:
    """Every target x precision is known, fits the source, has its data, and its options are
    valid: all before any export starts (what is *installed* is checked per target, in the plan)."""
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
        target_options(target)
    if config.recovery is not None and config.recovery.qat and source_kind == "onnx":
        raise ConfigError(
            f"[recovery] qat = true trains the PyTorch model, and {config.model.source!r} is an ONNX file; "
            "use a Python, .pt2 or hf: source, or set qat = false"
        )
    _check_qat(config)


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


def tolerance_for(target: TargetConfig) -> Tolerance:
    """The precision's default tolerances with the config's overrides applied."""
    base = check_target(target.name, target.precision).precision(target.precision).tolerance
    if target.tolerance is None:
        return base
    return base.model_copy(update=target.tolerance.model_dump(exclude_unset=True))


def toolchain_dists() -> tuple[str, ...]:
    """Every distribution any target records: what ``kiln doctor`` lists."""
    seen: dict[str, None] = {}
    for spec in REGISTRY.values():
        for p in spec.precisions:
            seen.update(dict.fromkeys(spec.dists(p.name)))
    return tuple(seen)


def quiet_toolchains() -> None:
    """Quiet every target's chatty loggers and block the imports rows ask to block. Toolchains
    warn about their own internals on every call; a user can act on none of it (``--verbose``
    keeps it all)."""
    for spec in REGISTRY.values():
        for name in spec.quiet_loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
    for name in COMMON_QUIET:
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
    """This machine's fingerprint, with the version of every registered target's toolchain."""
    return hardware.fingerprint(toolchain_dists())
