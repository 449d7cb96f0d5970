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

A causal LM's step graph (``[model].task = "text-generation"``) converts by default to a stateful
model (``kv_cache = "state"``, iOS18 / macOS15 at least): the KV cache is one fp16 Core ML state
written at ``position_ids``, inputs ``input_ids`` and ``position_ids`` only, output ``logits``; on
macOS it decodes through ``MLModel.make_state()`` (:mod:`kiln.targets.coreml.stateful`).
``kv_cache = "explicit"`` keeps the step graph's past/present inputs and outputs instead. The
form, the state and the deployment target are recorded in ``execution.kv_cache``.

Known limits on Linux: prediction needs macOS, so the gate runs the same compression applied in
PyTorch (``coremltools.optimize.torch``, see :mod:`kiln.targets.coreml.simulation`), labelled simulated,
and the package's stored weights are decompressed and compared with the source weights
(``execution.weights`` in the manifest). fp16 activation arithmetic, the Neural Engine, and the
package's real outputs are verified only on a Mac. For a causal LM the simulation also rounds
every activation to fp16 under fp16 compute, and decodes the stateful step with its fp16 cache.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np

from kiln.errors import ConfigError, TargetBuildError, UnavailableError, error_line
from kiln.manifest import Execution
from kiln.spec import Arrays, Signature
from kiln.targets import COREMLTOOLS, TORCH, TORCHAO
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.coreml import stateful
from kiln.targets.coreml.compress import (
    Settings,
    compress,
    parse_settings,
    quantize_activations,
    stored_weights,
    weight_report,
)
from kiln.targets.coreml.options import CoreMLOptions
from kiln.tensors import named_outputs, set_threads

MAIN = "model.mlpackage"
IO_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int32}
log = logging.getLogger("kiln.coreml")
# The toolchains whose loggers (all of each tree) talk per op, per pass or at import here.
NOISY = tuple(p.module for p in (COREMLTOOLS, TORCH, TORCHAO))


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
        text = error_line(w.message, 200, typed=False)
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
        if isinstance(size, int) or sig.dim(size).static:
            dims.append(size if isinstance(size, int) else sig.dim(size).min)
        else:
            spec = sig.dim(size)
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


def cache_form(settings: Settings, sig: Signature) -> Settings:
    """The settings with a causal LM's cache form resolved: ``state`` (the default; iOS18 at least,
    the first Core ML with states) or ``explicit``; ``None`` for any other model."""
    if not sig.generative:
        if settings.kv_cache is not None:
            raise ConfigError("coreml: kv_cache applies to causal LMs ([model].task = 'text-generation'); drop it")
        return settings
    form = settings.kv_cache or "state"
    target = settings.deployment_target
    if form == "state":
        ct, _ = coremltools()
        given = getattr(ct.target, target, None)
        if settings.deployment_given and given is not None and given < ct.target.iOS18:
            raise ConfigError(
                f"coreml: the stateful KV cache needs minimum_deployment_target iOS18 or macOS15 (Core ML states); "
                f"{target} was given: raise it, or choose kv_cache = 'explicit'"
            )
        if not settings.deployment_given:
            target = "iOS18"
    return replace(settings, kv_cache=form, deployment_target=target)


def _program(ctx: CompileContext, settings: Settings) -> tuple[Any, Signature]:
    """What is converted, with its signature: the captured program (a causal LM's step graph at
    batch 1 without its ``attention_mask``: :func:`stateful.batch_one`), or its stateful form;
    decomposed as coremltools needs, without ``aten.alias`` (a no-op view coremltools has no
    converter for)."""
    import torch

    program, sig = ctx.export.program(), ctx.export.signature
    if sig.generative:
        program, sig = stateful.batch_one(program, sig)
    if settings.kv_cache == "state":
        program = stateful.export(stateful.math_attention(program).module(), sig)
    program = program.run_decompositions()
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program, sig


def convert(ctx: CompileContext, settings: Settings, notes: list[str]) -> Any:
    """The captured program (or its stateful form) as an uncompressed ``mlprogram`` at the compute precision."""
    ct, _ = coremltools()
    target = getattr(ct.target, settings.deployment_target, None)
    if target is None:
        choices = [t for t in dir(ct.target) if t[:3] in ("iOS", "mac")]
        raise ConfigError(
            f"coreml: unknown minimum_deployment_target {settings.deployment_target!r}; choose one of: {', '.join(choices)}"
        )
    try:
        with quiet(notes):
            program, sig = _program(ctx, settings)
            if settings.kv_cache == "state":
                types = stateful.convert_types(ct, sig)
            else:
                types = {"inputs": convert_inputs(ct, sig, settings), "outputs": _output_types(ct, program, sig)}
            return ct.convert(
                program,
                **types,
                convert_to="mlprogram",
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT16
                if settings.compute_precision == "fp16"
                else ct.precision.FLOAT32,
                compute_units=ct.ComputeUnit[settings.compute_units.upper()],
            )
    except (ConfigError, TargetBuildError):
        raise
    except Exception as err:
        raise TargetBuildError(
            f"Core ML conversion failed: {error_line(err)}; a newer coremltools may support the "
            "operator, or make the failing dim static; --verbose shows the trace"
        ) from err


def _io_names(mlmodel: Any, sig: Signature) -> tuple[dict[str, str], dict[str, str]]:
    """Signature input and output names -> Core ML names, where Core ML renamed one (it sanitizes
    names: ``past.0.key`` becomes ``past_0_key``)."""
    spec = mlmodel.get_spec().description
    inputs = {
        ours: theirs.name for ours, theirs in zip(sig.input_names, spec.input, strict=False) if ours != theirs.name
    }
    outputs = {ours: theirs.name for ours, theirs in zip(sig.outputs, spec.output, strict=False) if ours != theirs.name}
    return inputs, outputs


def converted(sig: Signature) -> Signature:
    """The signature of what Core ML runs: a causal LM's step graph at batch 1 without its
    ``attention_mask`` (:func:`stateful.one_sequence`), any other model's own."""
    return stateful.one_sequence(sig) if sig.generative else sig


def one_by_one(predict: Any, inputs: Arrays) -> Arrays:
    """A causal LM's step contract at any batch through ``predict``, which takes one sequence
    without a mask: row by row, the outputs concatenated. A mask with padding (a zero) is refused."""
    mask = inputs.get(stateful.MASK)
    if mask is not None and not np.all(mask == 1):
        raise ConfigError(
            "coreml: the package runs one sequence without padding, and the attention_mask has zeros; "
            "feed one unpadded sequence at a time"
        )
    rows = [
        predict({name: value[i : i + 1] for name, value in inputs.items() if name != stateful.MASK})
        for i in range(len(inputs["input_ids"]))
    ]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


class MLModelRunner(Runner):
    """The real ``.mlpackage`` through Core ML (macOS only). A causal LM's package takes one
    sequence without a mask: a batch of the step contract runs row by row, its ``attention_mask``
    (all ones: no padding) not fed."""

    def __init__(self, artifact: Artifact, options: RunOptions) -> None:
        ct, _ = coremltools()
        self.sig, self.renamed = converted(artifact.signature), artifact.info.get("renamed_outputs", {})
        self.renamed_inputs = artifact.info.get("renamed_inputs", {})
        self.units = artifact.info.get("compute_units", "all")
        self.model = ct.models.MLModel(str(artifact.main), compute_units=ct.ComputeUnit[self.units.upper()])

    def infer(self, inputs: Arrays) -> Arrays:
        if self.sig.generative:
            return one_by_one(self._predict, inputs)
        return self._predict(inputs)

    def _predict(self, inputs: Arrays) -> Arrays:
        feed = {
            self.renamed_inputs.get(s.name, s.name): np.ascontiguousarray(inputs[s.name], IO_DTYPES[s.dtype])
            for s in self.sig.inputs
        }
        out = self.model.predict(feed)
        return named_outputs(self.sig.outputs, [out[self.renamed.get(n, n)] for n in self.sig.outputs])

    def info(self) -> dict[str, Any]:
        return {"compute_units": self.units}


class CoreMLTarget(Target):
    options_model = CoreMLOptions

    def compile(self, ctx: CompileContext) -> Artifact:
        from kiln.targets.coreml.simulation import matrices, simulate, weighted_module

        settings = cache_form(parse_settings(ctx.target, ctx.options), ctx.export.signature)
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
        if settings.kv_cache is not None:
            info.kv_cache = _cache_info(settings, ctx.export.signature)
        if settings.kv_cache != "state":
            renamed_inputs, renamed = _io_names(mlmodel, converted(ctx.export.signature))
            if renamed:
                info.renamed_outputs = renamed
            if renamed_inputs:
                info.renamed_inputs = renamed_inputs
        return Artifact("coreml", settings.precision, ctx.out_dir, MAIN, ctx.export.signature, info=info)

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        if platform.system() != "Darwin":
            raise UnavailableError("Core ML prediction needs macOS; on Linux kiln checks the package by simulation")
        if artifact.info.get("kv_cache", {}).get("form") == "state":
            ct, _ = coremltools()
            units = artifact.info.get("compute_units", "all")
            model = ct.models.MLModel(str(artifact.main), compute_units=ct.ComputeUnit[units.upper()])
            return stateful.StateRunner(artifact.signature, stateful.CoreMLState(model), {"compute_units": units})
        return MLModelRunner(artifact, options)

    def simulated_runner(self, artifact: Artifact, ctx: CompileContext) -> Runner | None:
        """The eager module with the package's compression applied by ``coremltools.optimize.torch``."""
        from kiln.targets.coreml.simulation import round_activations, simulate, weighted_module
        from kiln.targets.eager import TorchRunner  # the eager target's runner: the one cross-target import

        settings = cache_form(parse_settings(ctx.target, ctx.options), ctx.export.signature)
        program, sig = ctx.export.program(), ctx.export.signature
        if settings.kv_cache == "state":  # the program the package holds: batch 1, no mask input
            program, sig = stateful.batch_one(program, sig)
        module = weighted_module(stateful.math_attention(program) if sig.generative else program)
        with quiet([]):
            simulate(module, settings)
        artifact.info.simulation = (
            "coremltools.optimize.torch on the eager module (batch norm folded, weights as stored, fp32 arithmetic)"
        )
        if settings.kv_cache is None:
            return TorchRunner(module, artifact.signature, RunOptions(threads=ctx.threads))
        # A causal LM decodes step after step, where fp16 activations compound: emulate them too.
        fp16 = settings.compute_precision == "fp16"
        if fp16:
            artifact.info.simulation = artifact.info.simulation.replace(
                "fp32 arithmetic", "every activation rounded to fp16, fp32 arithmetic inside each op"
            )
        if settings.kv_cache == "explicit":
            if fp16:
                round_activations(module)
            return TorchRunner(module, artifact.signature, RunOptions(threads=ctx.threads))
        artifact.info.simulation += "; the stateful step in PyTorch with its fp16 cache, as the package holds it"
        threads = set_threads(ctx.threads)
        step = stateful.stateful_step(module, sig)
        if fp16:
            round_activations(step.step)
        return stateful.StateRunner(artifact.signature, stateful.TorchState(step), {"threads": threads})


def _cache_info(settings: Settings, sig: Signature) -> dict[str, Any]:
    """The manifest's account of a causal LM's cache form."""
    if settings.kv_cache == "state":
        return stateful.describe(sig)
    return {
        "form": "explicit",
        "past": [sig.dims["past"].min, sig.dims["past"].max],
        "inputs": converted(sig).input_names,
        "note": "past/present as inputs and outputs, batch 1 (the step graph's attention_mask is ones inside); "
        "a prefill's empty past (past 0) is unverified on Core ML",
    }


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
