"""Core ML: an ``mlprogram`` ``.mlpackage`` converted from the captured program, compressed the
Core ML way; built and checked on any machine, run on macOS.

Toolchain: coremltools 9.0 (tested here with torch 2.13, which coremltools calls untested past
2.7: kiln says so once per build and records it). The ``torch.export`` program is run through the
default decomposition table (transformers need it) and converted with its input names, output
names and named dims (``RangeDim`` from min/opt/max, or ``enumerated_shapes`` from the options).

Precisions (``precision`` in ``[[target]]``):

- ``fp16`` (default) / ``fp32``: the compute precision of the program, no weight compression;
- ``int8``: linear symmetric weight quantization, per channel (``granularity = "per_block"``
  with ``block_size`` for blocks); ``int4``: the same at 4 bits, per block of 32 by default;
- ``palettize4``: 4-bit k-means palettes, per tensor; ``palettize``: choose ``nbits`` (1, 2, 3,
  4, 6, 8; default 6), ``granularity = "per_grouped_channel"`` with ``group_size`` for grouped
  palettes;
- ``w8a8``: int8 weights and activations, activation ranges from ``[calibration]``. Calibration
  runs Core ML predictions, so it builds only on macOS.

Pruning (``prune`` in ``[[target]]``) is done by kiln on the PyTorch model before capture, for
every target; Core ML then stores a magnitude or 2:4 pruned model's zeros sparse
(``prune_weights`` with a threshold, so no further weight is zeroed), jointly with a compressed
precision. Other options: ``minimum_deployment_target`` (``"iOS17"`` by
default, ``"iOS18"`` where int4, blocks, grouped palettes or joint compression need it),
``compute_units`` (all | cpu_only | cpu_and_gpu | cpu_and_ne), ``compute_precision`` (fp16 | fp32,
for the compressed precisions), ``weight_threshold`` (weights of at most this many elements stay
uncompressed; coremltools' 2048 by default); all typed in :class:`CoreMLOptions`.

Known limits on Linux: prediction needs macOS, so the gate runs the same compression applied in
PyTorch (``coremltools.optimize.torch``, see :mod:`kiln.targets.coreml.simulation`), labelled simulated,
and the package's stored weights are decompressed and compared with the source weights
(``execution.weights`` in the manifest). fp16 activation arithmetic, the Neural Engine, and the
package's real outputs are verified only on a Mac.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np

from kiln.errors import ConfigError, TargetBuildError, UnavailableError
from kiln.manifest import Execution
from kiln.spec import Arrays, Signature
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.coreml.compress import (
    Settings,
    compress,
    parse_settings,
    quantize_activations,
    stored_weights,
    weight_report,
)
from kiln.targets.coreml.options import CoreMLOptions
from kiln.tensors import named_outputs

MAIN = "model.mlpackage"
IO_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int32}
log = logging.getLogger("kiln.coreml")
NOISY = ("coremltools", "torch", "torchao")  # loggers that talk per op, per pass or at import


@contextlib.contextmanager
def quiet(notes: list[str]) -> Iterator[None]:
    """coremltools logs per op and per pass and draws progress bars; keep the distinct warnings
    (deprecations of its own internals excepted) as notes instead of printing them."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(NOISY)]
    loggers.append(logging.getLogger("coremltools"))
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    for w in caught:
        text = str(w.message).splitlines()[0][:200]
        if not issubclass(w.category, DeprecationWarning | FutureWarning | ResourceWarning) and text not in notes:
            notes.append(text)


@cache
def coremltools() -> tuple[Any, str | None]:
    """coremltools, imported once and quietly; with the one warning worth surfacing: the torch
    version it was not tested with."""
    with quiet([]):
        import coremltools as ct
        import torch
        from coremltools import _deps
    from packaging.version import Version

    tested = getattr(_deps, "_TORCH_MAX_VERSION", None)
    torch_version = torch.__version__.split("+")[0]
    note = None
    if tested and Version(torch_version) > Version(tested):
        note = (
            f"coremltools {ct.__version__} is tested with torch <= {tested}, this is torch {torch_version}: "
            "the package is checked here by weights and a PyTorch simulation; confirm outputs on a Mac"
        )
        log.warning("kiln: %s", note)
    return ct, note


def _shape(ct: Any, sig: Signature, name: str, shape: list[int | str], settings: Settings, made: dict[str, Any]) -> Any:
    if settings.enumerated_shapes and name in settings.enumerated_shapes:
        shapes = [tuple(s) for s in settings.enumerated_shapes[name]]
        return ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
    dims = []
    for size in shape:
        if isinstance(size, int) or sig.dims[size].static:
            dims.append(size if isinstance(size, int) else sig.dims[size].min)
        else:
            spec = sig.dims[size]
            # one RangeDim per named dim, shared by every input that uses it (a symbol is declared once)
            if size not in made:
                made[size] = ct.RangeDim(lower_bound=spec.min, upper_bound=spec.max, default=spec.best, symbol=size)
            dims.append(made[size])
    return ct.Shape(dims)


def convert_inputs(ct: Any, sig: Signature, settings: Settings) -> list[Any]:
    """``ct.TensorType`` per input: the signature's names, dtypes and named dims."""
    if settings.enumerated_shapes and (unknown := sorted(set(settings.enumerated_shapes) - set(sig.input_names))):
        raise ConfigError(f"coreml: enumerated_shapes names {unknown[0]!r}, not an input ({sig.input_names})")
    types, made = [], {}
    for spec in sig.inputs:
        if spec.dtype not in IO_DTYPES:
            raise ConfigError(f"coreml: input {spec.name!r} has dtype {spec.dtype}; Core ML takes {sorted(IO_DTYPES)}")
        types.append(
            ct.TensorType(
                name=spec.name,
                shape=_shape(ct, sig, spec.name, spec.shape, settings, made),
                dtype=IO_DTYPES[spec.dtype],
            )
        )
    return types


def _output_types(ct: Any, program: Any, sig: Signature) -> list[Any]:
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    vals = [getattr(arg, "meta", {}).get("val") for arg in out_node.args[0]]
    return [
        ct.TensorType(name=name, dtype=np.float32 if val is not None and val.is_floating_point() else None)
        for name, val in zip(sig.outputs, vals, strict=False)
    ]


def convert(ctx: CompileContext, settings: Settings, notes: list[str]) -> Any:
    """The captured program as an uncompressed ``mlprogram`` at the compute precision."""
    ct, _ = coremltools()
    sig = ctx.export.signature
    target = getattr(ct.target, settings.deployment_target, None)
    if target is None:
        choices = [t for t in dir(ct.target) if t[:3] in ("iOS", "mac")]
        raise ConfigError(
            f"coreml: unknown minimum_deployment_target {settings.deployment_target!r}; choose one of: {', '.join(choices)}"
        )
    try:
        with quiet(notes):
            program = ctx.export.program().run_decompositions()
            return ct.convert(
                program,
                inputs=convert_inputs(ct, sig, settings),
                outputs=_output_types(ct, program, sig),
                convert_to="mlprogram",
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT16
                if settings.compute_precision == "fp16"
                else ct.precision.FLOAT32,
                compute_units=ct.ComputeUnit[settings.compute_units.upper()],
            )
    except ConfigError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TargetBuildError(
            f"Core ML conversion failed: {type(err).__name__}: {first}; a newer coremltools may support the "
            "operator, or make the failing dim static; --verbose shows the trace"
        ) from err


def _io_names(mlmodel: Any, sig: Signature) -> dict[str, str]:
    """Signature output name -> Core ML name, where Core ML renamed one (it sanitizes names)."""
    names = [out.name for out in mlmodel.get_spec().description.output]
    return {ours: theirs for ours, theirs in zip(sig.outputs, names, strict=False) if ours != theirs}


class MLModelRunner(Runner):
    """The real ``.mlpackage`` through Core ML (macOS only)."""

    def __init__(self, artifact: Artifact, options: RunOptions) -> None:
        ct, _ = coremltools()
        self.sig, self.renamed = artifact.signature, artifact.info.get("renamed_outputs", {})
        self.units = artifact.info.get("compute_units", "all")
        self.model = ct.models.MLModel(str(artifact.main), compute_units=ct.ComputeUnit[self.units.upper()])

    def infer(self, inputs: Arrays) -> Arrays:
        feed = {s.name: np.ascontiguousarray(inputs[s.name], IO_DTYPES[s.dtype]) for s in self.sig.inputs}
        out = self.model.predict(feed)
        return named_outputs(self.sig.outputs, [out[self.renamed.get(n, n)] for n in self.sig.outputs])

    def info(self) -> dict[str, Any]:
        return {"compute_units": self.units}


class CoreMLTarget(Target):
    options_model = CoreMLOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        from kiln.targets.coreml.simulation import matrices, simulate, weighted_module

        settings = parse_settings(ctx.target, ctx.options)
        if settings.mode == "w8a8" and platform.system() != "Darwin":
            raise UnavailableError(
                "coreml:w8a8 calibrates activations by running Core ML predictions, which needs macOS; "
                "build it on a Mac, or use coreml:int8 (weights only) here"
            )
        if settings.mode == "w8a8" and ctx.calibration is None:
            raise ConfigError("coreml:w8a8 needs a [calibration] section for activation ranges; add one")
        _, version_note = coremltools()
        notes = [version_note] if version_note else []
        mlmodel = convert(ctx, settings, notes)
        try:
            with quiet(notes):
                if settings.mode == "w8a8":
                    assert ctx.calibration is not None
                    mlmodel = quantize_activations(mlmodel, ctx.calibration.samples)
                mlmodel = compress(mlmodel, settings)
                mlmodel.save(str(ctx.out_dir / MAIN))
                stored = stored_weights(mlmodel)
        except Exception as err:
            raise TargetBuildError(
                f"Core ML compression for {settings.precision} failed: {type(err).__name__}: {str(err)[:300]}; "
                "check the options (granularity, block_size, nbits) and minimum_deployment_target"
            ) from err
        source = weighted_module(ctx.export.program())
        source_weights = {k: v.numpy() for k, v in matrices(source).items()}
        with quiet(notes):
            simulated = simulate(weighted_module(ctx.export.program()), settings)
        info = Execution(execution_precision=settings.compute_precision, notes=notes)
        info.update(
            {
                "compression": _describe(settings),
                "minimum_deployment_target": settings.deployment_target,
                "compute_units": settings.compute_units,
                "weights": weight_report(stored, source_weights, {k: v.numpy() for k, v in simulated.items()}),
            }
        )
        if renamed := _io_names(mlmodel, ctx.export.signature):
            info.renamed_outputs = renamed
        return Artifact("coreml", settings.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        if platform.system() != "Darwin":
            raise UnavailableError("Core ML prediction needs macOS; on Linux kiln checks the package by simulation")
        return MLModelRunner(artifact, options)

    def simulated_runner(self, artifact: Artifact, ctx: CompileContext) -> Runner | None:
        """The eager module with the package's compression applied by ``coremltools.optimize.torch``."""
        from kiln.targets.coreml.simulation import simulate, weighted_module
        from kiln.targets.eager import TorchRunner  # the eager target's runner: the one cross-target import

        settings = parse_settings(ctx.target, ctx.options)
        module = weighted_module(ctx.export.program())
        with quiet([]):
            simulate(module, settings)
        artifact.info.simulation = (
            "coremltools.optimize.torch on the eager module (batch norm folded, weights as stored, fp32 arithmetic)"
        )
        return TorchRunner(module, artifact.signature, RunOptions(threads=ctx.threads))


def _describe(settings: Settings) -> dict[str, Any]:
    """The compression actually applied, in the manifest's words."""
    out: dict[str, Any] = {"mode": settings.mode, "weight_threshold": settings.weight_threshold}
    if settings.mode in ("linear", "w8a8"):
        out.update(dtype=settings.dtype, granularity=settings.granularity)
        if settings.granularity == "per_block":
            out["block_size"] = settings.block_size
    if settings.mode == "palettize":
        out.update(nbits=settings.nbits, granularity=settings.granularity)
    if settings.sparse:
        out["sparse"] = True
    return out


TARGET = CoreMLTarget()
