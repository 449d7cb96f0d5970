"""The small typed interface every target implements.

A target turns the one capture into a native artifact (``compile``) and loads that artifact into
a :class:`Runner` (``load``). Runners speak numpy dicts keyed by the signature's input and output
names, so the parity gate and the benchmark harness treat every runtime alike. Timing lives only
in the benchmark harness, never in a target.
"""

from __future__ import annotations

import abc
import contextlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from kiln.config import TargetConfig, Tolerance
from kiln.errors import ConfigError
from kiln.manifest import Execution, Manifest, QatReport
from kiln.spec import Arrays, Signature

QUIET = False  # set by kiln.targets.quiet_toolchains (every command but --verbose)


@contextlib.contextmanager
def toolchain_prints() -> Iterator[None]:
    """Swallow what a toolchain call print()s to stdout (ONNX Runtime's calibrators narrate
    every histogram), where a pipeline reads kiln's own output; kept under ``--verbose``."""
    if not QUIET:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


if TYPE_CHECKING:
    from kiln.capture.exporters import ExportBundle
    from kiln.data import CalibrationSet, EvaluationSet
    from kiln.decoding import DecodeSession
    from kiln.quant.qat import QatSetup


# Per precision, the options ``kiln tune`` tries: (option, the values other than the default).
SearchSpace = Mapping[str, tuple[tuple[str, tuple[Any, ...]], ...]]


class TargetOptions(BaseModel):
    """A target's ``options`` table, typed: an unknown key or a bad value is one line naming it,
    before any work. ``None`` means "the toolchain's (or kiln's measured) default". Validators
    that depend on the precision read it from ``info.context["precision"]``."""

    # strict: a TOML value of the wrong type ("yes", 64.0) is refused, never coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # The quantizer settings worth trying, declared beside the options they search (as Olive's
    # passes declare theirs); tests/targets/test_search_space.py checks each names a field.
    search_space: ClassVar[SearchSpace] = {}

    def fallbacks(self, precision: str, facts: ModelFacts) -> tuple[dict[str, Any], ...]:
        """The settings a build tries, in order, when this one breaches its gate (kiln build's
        accuracy-controlled search): each a partial update of these options, the smallest and
        fastest first. A setting that changes an option the user gave is skipped. None by default."""
        del precision, facts
        return ()


@dataclass(frozen=True)
class ModelFacts:
    """What an options model's fallbacks may depend on."""

    generative: bool  # a causal LM with a KV cache
    data: bool  # calibration data for data-aware settings: [calibration], or text through its tokenizer
    gguf: bool = False  # dequantized from a GGUF file: its weights may lie on the file's grid


class NoOptions(TargetOptions):
    """A target with no options."""


@dataclass(frozen=True)
class RunOptions:
    """How a runner runs: threads are always set explicitly, and recorded."""

    threads: int | None = None
    mode: str = "latency"  # latency | throughput
    requests: int = 1  # requests in flight in throughput mode


@dataclass(frozen=True)
class ServedRun:
    """How a model server is to run an artifact, as kiln measured it (``kiln package --repository``)."""

    precision: str
    mode: str  # latency | throughput
    threads: int | None  # None: the runtime's default
    streams: int | None
    max_batch: int  # 0: the model does not batch
    dynamic_dims: bool  # an input has a dynamic dim beyond the batch


@dataclass(frozen=True)
class CompileContext:
    """What a target gets to build from: the capture, its own config and typed options, the data
    (loaded once per build), a folder to fill."""

    export: ExportBundle
    target: TargetConfig
    options: Any  # the target's own TargetOptions subclass, validated from target.options
    out_dir: Path
    tolerance: Tolerance  # the gate's tolerance for this target (registry default + overrides)
    calibration: CalibrationSet | None = None
    # How many samples the precision's quantizer asks for (the registry row); None: no calibration.
    calibration_guidance: int | None = None
    threads: int | None = None
    evaluation: EvaluationSet | None = None  # for accuracy-aware toolchains (NNCF accuracy control)
    max_metric_drop: float | None = None
    root: Path = Path(".")  # the config's folder, for user callables (custom metrics)
    qat: QatSetup | None = None  # [recovery] qat = true, for a precision with a QAT path

    def require_qat_data(self) -> CalibrationSet:
        """QAT measures PTQ on the same quantizer beside it: that needs the calibration set."""
        if self.calibration is None or not self.calibration.samples:
            raise ConfigError(
                f"{self.target.key}: quantization-aware training starts from a calibrated quantizer; add [calibration]"
            )
        return self.calibration

    @property
    def precision(self) -> str:
        return self.target.precision


@dataclass
class Artifact:
    """A built artifact: the folder, its main file and what the toolchain really chose."""

    target: str
    precision: str
    path: Path
    main_file: str
    signature: Signature
    info: Execution = field(default_factory=Execution)
    options: dict[str, Any] = field(default_factory=dict)
    qat: QatReport | None = None  # how quantization-aware training made it, when it did
    # The PyTorch model the artifact must reproduce when it is not the build's eager model (QAT's
    # trained, quantized model): the gate's parity reference; the metric drop stays vs eager.
    reference: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.info, Execution):  # a target may describe itself with a plain mapping
            self.info = Execution.model_validate(self.info)

    @property
    def main(self) -> Path:
        return self.path / self.main_file

    @classmethod
    def from_manifest(cls, folder: Path, manifest: Manifest | None = None) -> Artifact:
        """The artifact a built folder holds, from its manifest (for bench, verify, package)."""
        m = manifest if manifest is not None else Manifest.read(folder)
        return cls(m.target, m.precision, folder, m.main_file, m.signature, m.execution.model_copy(), m.options)


class Runner(abc.ABC):
    """A loaded artifact. Reusable: ``infer`` may be called any number of times."""

    @abc.abstractmethod
    def infer(self, inputs: Arrays) -> Arrays:
        """Run one request; outputs keyed by the signature's output names."""

    def synchronize(self) -> None:
        """Wait for queued device work (GPU targets); a no-op on synchronous CPU runtimes."""

    def info(self) -> dict[str, Any]:
        """What the runtime reports about how it runs (execution precision, threads, streams)."""
        return {}

    def decode_session(self, signature: Signature) -> DecodeSession | None:
        """A causal LM's decoding on this runtime when it keeps the KV cache itself (a stateful
        graph); ``None``: kiln carries the cache through ``infer`` (:class:`ExplicitCache`)."""
        return None

    def infer_many(self, batches: list[Arrays]) -> None:
        """Throughput mode: run all requests, using the runtime's own concurrency if it has it."""
        for inputs in batches:
            self.infer(inputs)

    def close(self) -> None:
        """Release the runtime's resources."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Target(abc.ABC):
    """A backend: compile the capture into an artifact, and load an artifact to run it."""

    # The typed model of this target's ``options`` table.
    options_model: ClassVar[type[TargetOptions]] = NoOptions
    # Whether ``prepare`` writes anything: only then is it kept (``<key>.prepared/``) where the
    # target cannot build.
    prepares: ClassVar[bool] = False

    @abc.abstractmethod
    def compile(self, ctx: CompileContext) -> Artifact:
        """Write the native artifact into ``ctx.out_dir`` and describe it."""

    @abc.abstractmethod
    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        """Load a built artifact into a runner."""

    def run_blocker(self, options: TargetOptions) -> str | None:
        """Why an artifact built with these options cannot run on this machine although the
        registry row's run needs are met (e.g. a delegate that only an Apple device runs), as
        the availability reason; ``None``: nothing blocks it. The build plan consults it, so such
        an artifact is gated by :meth:`simulated_runner` (or built, not run) instead of loaded."""
        return None

    def triton_parameters(self, run: ServedRun) -> dict[str, str]:
        """The ``parameters`` of this target's Triton backend that run it as kiln measured it
        (thread settings in the backend's own keys); empty: the backend's defaults."""
        return {}

    def prepare(self, ctx: CompileContext) -> None:
        """Work that needs no toolchain, done even where the target cannot build (e.g. the Q/DQ
        ONNX a TensorRT engine would be built from); ``ctx.out_dir`` is kept for inspection."""

    def simulated_runner(self, artifact: Artifact, ctx: CompileContext) -> Runner | None:
        """Where the artifact cannot run here, a runner that reproduces its numerics on this
        machine (e.g. Core ML compression applied in PyTorch), so the gate still has figures.
        Its results are labelled simulated in the manifest."""
        return None
