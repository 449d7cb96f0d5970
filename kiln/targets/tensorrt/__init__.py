"""TensorRT engines for NVIDIA GPUs, built from kiln's ONNX with the TensorRT 10 Python API.

Toolchain: ``tensorrt`` 10.x (``pip install 'kiln[tensorrt]'``; its libraries come from NVIDIA's
index) with a CUDA build of PyTorch for the runner (no pycuda); TensorRT 11 is refused with exit 5
(:mod:`kiln.targets.tensorrt.toolchain`). Written against the documented TensorRT 10 API; on
kiln's development machines (no GPU, no TensorRT) :meth:`prepare` has run for real (profile
derivation, the Q/DQ ONNX and its checks, the 2:4 pattern check) and :meth:`compile` only against
a stand-in ``tensorrt`` module in the tests; real engines, the inspector and the runner have not
been executed there.

- ``prepare`` (no TensorRT needed): ``profiles.json`` (min/opt/max per input from the named
  dims), for ``int8``/``fp8`` the explicit-quantization ``model.qdq.onnx`` with ``qdq.json``
  (:mod:`kiln.targets.tensorrt.qdq`), for 2:4 pruning ``sparsity-2of4.json``, and ``plan.json``:
  the network typing, builder flags, workspace and ONNX file (absolute) the build will use.
- ``compile``: parse, one optimization profile per entry of ``profiles.json``, the network's
  typing: Q/DQ networks (``fp8``; ``int8`` with ``int8_fallback = "fp32"``) are *strongly typed*
  (each layer runs in the types the Q/DQ ONNX gives it, no precision flags: since 10.1
  ``BuilderFlag.FP8`` only enables FP8 plugins, and NVIDIA builds FP8 strongly typed); the others
  are weakly typed with precision flags, deprecated since 10.12 but the only way to run an fp32
  ONNX in fp16/bf16 (``fp32`` clears TF32 so fp32 means fp32; ``int8`` with the default fp16
  fallback sets INT8 + FP16), ``SPARSE_WEIGHTS`` for 2:4, a workspace limit, the
  timing cache ``<out>/<model>/.trt-timing.cache`` (loaded, then saved back), ``model.engine``,
  and the inspector's layer JSON (``engine-layers.json``) summarised into the artifact info with
  flags for optimizations TensorRT did not take (:mod:`kiln.targets.tensorrt.inspection`).
- ``load``: a runner on one CUDA stream; tensors travel through PyTorch; shapes are set per
  call and the profile is picked per call. An engine only runs on the GPU model and TensorRT
  version it was built with: ``load`` checks both against the artifact info.

Options (``options`` in ``[[target]]``, :class:`TensorRTOptions`): ``workspace_mb``, ``profiles``,
``calibration_method`` and ``qdq_op_types`` (the Q/DQ ONNX), ``optimization_level``,
``int8_fallback``, ``sparse_weights``, ``timing_cache``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, TargetBuildError, UnavailableError
from kiln.manifest import Execution, QatReport
from kiln.targets.base import Artifact, CompileContext, Runner, RunOptions, Target
from kiln.targets.tensorrt.inspection import engine_flags, sparsity_log, summarize
from kiln.targets.tensorrt.options import TensorRTOptions
from kiln.targets.tensorrt.profiles import Profile, derive_profiles, read_profiles, write_profiles
from kiln.targets.tensorrt.qdq import QDQ_ONNX, prepare_qdq, recipe_for
from kiln.targets.tensorrt.runner import TensorRTRunner
from kiln.targets.tensorrt.sparsity import check_2of4
from kiln.targets.tensorrt.toolchain import cuda_device, errors, import_tensorrt, trt_logger

MAIN = "model.engine"
PLAN = "plan.json"
QAT_REPORT = "qat.json"  # quantization-aware training's report, when the Q/DQ ONNX came from it
QAT_PROGRAM = "qat.pt2"  # and the trained program, which the engine must reproduce
LAYERS = "engine-layers.json"
TIMING_CACHE = ".trt-timing.cache"

# Weakly typed builds: the flags that let TensorRT pick lower-precision kernels. Strongly typed
# (Q/DQ) builds set none: TensorRT refuses precision flags there; the types come from the ONNX.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8",)}
SPARSE_PRECISIONS = ("fp16", "int8", "fp8")
MIN_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9), "2:4": (8, 0)}


@dataclass(frozen=True)
class EnginePlan:
    """What the builder will be asked for, decided (and written) before TensorRT is imported."""

    precision: str
    # The file the engine is built from: a name inside the engine's folder (model.qdq.onnx) or an
    # absolute path (the export's ONNX); resolved once, here, so no later cwd or folder changes it.
    onnx: str
    builder_flags: tuple[str, ...]
    cleared_flags: tuple[str, ...]
    workspace_bytes: int
    sparse: bool
    optimization_level: int | None
    timing_cache: str | None  # absolute
    strongly_typed: bool = False


@dataclass(frozen=True)
class BuildRecord:
    """What one engine build reported: versions, device, the inspector's JSON, the log, the cache."""

    version: str
    device: dict[str, Any]
    layers: str
    messages: list[str]
    cache: tuple[int, int]  # timing cache bytes loaded, saved


def read_plan(folder: Path) -> EnginePlan:
    data = json.loads((folder / PLAN).read_text())
    return EnginePlan(
        **{**data, "builder_flags": tuple(data["builder_flags"]), "cleared_flags": tuple(data["cleared_flags"])}
    )


def sparse_requested(ctx: CompileContext) -> bool:
    prune = ctx.target.prune  # a PruneConfig (a plain table in older configs)
    method = prune.get("method") if isinstance(prune, dict) else getattr(prune, "method", None)
    return method == "2:4" or ctx.options.sparse_weights


def strongly_typed(precision: str, int8_fallback: str) -> bool:
    """Whether the network takes its types from the (Q/DQ) ONNX instead of precision flags: fp8
    always; int8 when its unquantized layers stay fp32 (an fp16 fallback needs weak typing)."""
    return precision == "fp8" or (precision == "int8" and int8_fallback == "fp32")


def make_plan(ctx: CompileContext) -> EnginePlan:
    options: TensorRTOptions = ctx.options
    precision = ctx.precision
    typed = strongly_typed(precision, options.int8_fallback)
    flags = [] if typed else list(PRECISION_FLAGS[precision])
    if precision == "int8" and not typed:
        flags.append("FP16")  # layers left unquantized run fp16 (or fp32)
    sparse = sparse_requested(ctx)
    if sparse and precision not in SPARSE_PRECISIONS:
        raise ConfigError(f"tensorrt: 2:4 sparse weights need fp16 or int8 kernels, not {precision}; pick one of those")
    if sparse:
        flags.append("SPARSE_WEIGHTS")
    # Absolute, resolved here against the caller's cwd: with a relative --out, a relative path
    # would later be read against the engine's own folder.
    export = ctx.export.path.resolve()
    return EnginePlan(
        precision=precision,
        onnx=QDQ_ONNX if precision in ("int8", "fp8") else str(ctx.export.onnx_path.resolve()),
        builder_flags=tuple(flags),
        cleared_flags=("TF32",) if precision == "fp32" else (),
        workspace_bytes=options.workspace_mb * 2**20,
        sparse=sparse,
        optimization_level=options.optimization_level,
        timing_cache=str(export.parent / TIMING_CACHE) if options.timing_cache else None,
        strongly_typed=typed,
    )


def engine_onnx(plan: EnginePlan, folder: Path) -> Path:
    """The ONNX file the plan builds from; a one-line error when it is not there."""
    path = Path(plan.onnx)
    if not path.is_absolute():
        if path.name != plan.onnx:
            raise TargetBuildError(f"plan.json names {plan.onnx!r}, neither a file of its folder nor absolute; rebuild")
        path = folder / path
    if not path.is_file():
        raise TargetBuildError(f"the ONNX file the engine is built from is missing: {path}; rebuild (kiln build)")
    return path


def _network(trt: Any, builder: Any, logger: Any, onnx_path: Path, typed: bool) -> tuple[Any, Any]:
    # TensorRT 10: explicit batch is the only mode; STRONGLY_TYPED exists since 9.0.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {problems}")
    return network, parser


def _config(trt: Any, builder: Any, plan: EnginePlan, profiles: list[Profile]) -> tuple[Any, int]:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector needs layer detail
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for shapes in profile.inputs:
            trt_profile.set_shape(shapes.name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(trt_profile)
    loaded = 0
    if plan.timing_cache:
        path = Path(plan.timing_cache)
        data = path.read_bytes() if path.is_file() else b""
        cache = config.create_timing_cache(data) if data else None  # None: a blob TensorRT cannot read
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            loaded = len(data)
        else:  # none yet, or written by another GPU / TensorRT version: start a fresh one
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return config, loaded


def _save_timing_cache(config: Any, path: Path) -> int:
    data = bytes(config.get_timing_cache().serialize())
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # several builds share the cache: never leave half a file
    return len(data)


def _inspect(trt: Any, logger: Any, engine_bytes: Any, profile: Profile) -> str:
    runtime = trt.Runtime(logger)  # must outlive the engine
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    for shapes in profile.inputs:  # concrete shapes, or the inspector hides tensor formats
        context.set_input_shape(shapes.name, shapes.opt)
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    information = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, context, engine  # released before their runtime
    return information


class TensorRTTarget(Target):
    options_model = TensorRTOptions
    prepares = True

    def prepare(self, ctx: CompileContext) -> None:
        options: TensorRTOptions = ctx.options
        write_profiles(derive_profiles(ctx.export.signature, options.profiles), ctx.out_dir)
        plan = make_plan(ctx)
        precision = ctx.precision
        if precision in ("int8", "fp8"):
            if ctx.calibration is None or not ctx.calibration.samples:
                raise ConfigError(
                    f"tensorrt:{precision} needs calibration data for its Q/DQ model (TensorRT's implicit "
                    "calibration is deprecated); add a [calibration] section to the config"
                )
            if ctx.qat is not None and precision == "int8":
                # Trained with fake quantization in the loop; its Q/DQ ONNX is the engine's source.
                import torch

                from kiln.targets.onnxruntime import qat_qdq

                program, report = qat_qdq(ctx, ctx.out_dir / QDQ_ONNX, symmetric=True)
                (ctx.out_dir / QAT_REPORT).write_text(report.model_dump_json(indent=2))
                torch.export.save(program, str(ctx.out_dir / QAT_PROGRAM))  # the gate's parity reference
                placement = {"from": "PT2E quantization-aware training (X86InductorQuantizer patterns)"}
                qdq = {"recipe": "qat, symmetric int8", "placement": placement, "parity_vs_fp32": None}
                (ctx.out_dir / "qdq.json").write_text(json.dumps(qdq, indent=2))
            else:
                recipe = recipe_for(precision, options.qdq_op_types, options.calibration_method)
                prepare_qdq(ctx.export.onnx_path, ctx.out_dir, ctx.calibration.samples, recipe, ctx.tolerance)
        if plan.sparse:
            check_2of4(ctx.export.onnx_path).write(ctx.out_dir)
        (ctx.out_dir / PLAN).write_text(json.dumps(asdict(plan), indent=2))

    def compile(self, ctx: CompileContext) -> Artifact:
        trt = import_tensorrt()
        device = cuda_device()
        plan = read_plan(ctx.out_dir)
        for need, floor in MIN_CAPABILITY.items():
            if (need == plan.precision or (need == "2:4" and plan.sparse)) and device["sm"] < floor:
                raise UnavailableError(
                    f"tensorrt:{plan.precision}{' with 2:4' if plan.sparse else ''} needs compute capability "
                    f"{floor[0]}.{floor[1]} or later; {device['gpu']} is {device['compute_capability']}"
                )
        profiles = read_profiles(ctx.out_dir)
        onnx_path = engine_onnx(plan, ctx.out_dir)
        logger = trt_logger(trt)
        with logger.capture() as messages:  # this build's messages, none of an earlier one's
            builder = trt.Builder(logger)
            network, _parser = _network(trt, builder, logger, onnx_path, plan.strongly_typed)
            names = [network.get_input(i).name for i in range(network.num_inputs)]
            if sorted(names) != sorted(ctx.export.signature.input_names):
                raise TargetBuildError(f"the ONNX inputs {names} differ from the signature's; report the model")
            config, loaded = _config(trt, builder, plan, profiles)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise TargetBuildError(f"TensorRT could not build the engine: {errors(trt, messages)}")
            with open(ctx.out_dir / MAIN, "wb") as f:
                f.write(serialized)
            saved = _save_timing_cache(config, Path(plan.timing_cache)) if plan.timing_cache else 0
            layers = _inspect(trt, logger, serialized, profiles[0])
        (ctx.out_dir / LAYERS).write_text(layers)
        record = BuildRecord(trt.__version__, device, layers, [msg for _, msg in messages], (loaded, saved))
        return self._artifact(ctx, plan, record)

    def _artifact(self, ctx: CompileContext, plan: EnginePlan, record: BuildRecord) -> Artifact:
        artifact = self._described(ctx, plan, record)
        if (ctx.out_dir / QAT_REPORT).is_file():
            import torch

            artifact.qat = QatReport.model_validate_json((ctx.out_dir / QAT_REPORT).read_text())
            artifact.reference = torch.export.load(str(ctx.out_dir / QAT_PROGRAM)).module()
        return artifact

    def _described(self, ctx: CompileContext, plan: EnginePlan, record: BuildRecord) -> Artifact:
        version, device, cache = record.version, record.device, record.cache
        summary = summarize(record.layers)
        log = sparsity_log(record.messages)
        pattern = json.loads((ctx.out_dir / "sparsity-2of4.json").read_text()) if plan.sparse else None
        qdq = json.loads((ctx.out_dir / "qdq.json").read_text()) if plan.precision in ("int8", "fp8") else None
        info: dict[str, Any] = {
            "execution_precision": plan.precision,
            "tensorrt_version": version,
            "gpu": device["gpu"],
            "compute_capability": device["compute_capability"],
            "portability": (
                f"an engine only runs where it was built: {device['gpu']} (compute capability "
                f"{device['compute_capability']}) with TensorRT {version}"
            ),
            "strongly_typed": plan.strongly_typed,
            "builder_flags": list(plan.builder_flags),
            "cleared_flags": list(plan.cleared_flags),
            "workspace_mb": plan.workspace_bytes // 2**20,
            "profiles": [p.to_dict() for p in read_profiles(ctx.out_dir)],
            "timing_cache": {
                "path": plan.timing_cache,
                "reused": cache[0] > 0,
                "loaded_bytes": cache[0],
                "saved_bytes": cache[1],
            },
            "layers": summary.to_dict(),
            "sparse": {"requested": plan.sparse, "builder_log": log, "pattern": pattern and pattern["qualifying"]},
            "qdq": qdq and {k: qdq[k] for k in ("recipe", "placement", "parity_vs_fp32")},
            "flags": engine_flags(plan.precision, summary, plan.sparse, log, pattern and pattern["qualifying"]),
            "notes": [f"strongly typed network: the Q/DQ layers run {plan.precision}, the others in the ONNX's types"]
            if plan.strongly_typed
            else [],
        }
        return Artifact(
            "tensorrt", plan.precision, ctx.out_dir, MAIN, ctx.export.signature, Execution.model_validate(info)
        )

    def load(self, artifact: Artifact, options: RunOptions) -> Runner:
        trt = import_tensorrt()
        device = cuda_device()
        built = (artifact.info.get("tensorrt_version"), artifact.info.get("compute_capability"))
        if built[0] and built != (trt.__version__, device["compute_capability"]):
            raise UnavailableError(
                f"this engine was built with TensorRT {built[0]} for compute capability {built[1]}; here: TensorRT "
                f"{trt.__version__} on {device['gpu']} ({device['compute_capability']}); rebuild it on this machine"
            )
        logger = trt_logger(trt)
        with logger.capture() as messages:
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(artifact.main.read_bytes())
        if engine is None:
            raise UnavailableError(f"TensorRT could not load {artifact.main}: {errors(trt, messages)}; rebuild it here")
        runner = TensorRTRunner(trt, engine, artifact, read_profiles(artifact.path), options)
        runner.owners = (runtime, logger)  # TensorRT wants both alive as long as the engine
        return runner


TARGET = TensorRTTarget()
