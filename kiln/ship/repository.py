"""A model repository for Triton Inference Server and OpenVINO Model Server (OVMS).

``write_model_repository(artifacts, out)`` lays out one model per artifact, named
``<model>-<target>-<precision>[-<prune>]`` (``digits-onnxruntime-int8``: the artifact's own key, so
several artifacts of one model sit side by side; both servers accept the characters of a kiln
model name)::

    out/config.json                      OVMS: model_config_list (ONNX and IR models)
    out/<name>/config.pbtxt              Triton: the model configuration
    out/<name>/manifest.json             the artifact's kiln manifest (both servers ignore it)
    out/<name>/1/model.onnx [+ data]     onnxruntime artifacts: Triton's onnxruntime backend, OVMS
    out/<name>/1/model.xml, model.bin    openvino artifacts: Triton's openvino backend, OVMS
    out/<name>/1/model.plan              tensorrt engines: Triton's tensorrt backend (same GPU
                                         model and TensorRT version as the build)

Start either server on it: ``tritonserver --model-repository=repo`` or
``ovms --config_path repo/config.json --rest_port 8000`` (OVMS runs ONNX models with OpenVINO, not
ONNX Runtime: numerics differ from what kiln's gate checked for an onnxruntime artifact).

``config.pbtxt`` is built as Triton's own protobuf message (``tritonclient``'s
``model_config_pb2``, the ``ship`` extra), printed with ``text_format`` and parsed back: a config that
does not round-trip is a kiln bug. What goes in it, and why:

- ``max_batch_size``: the batch dim's max when every input leads with the same dynamic dim (the
  signature's batch, min 1) and every output leads with a dynamic dim; else 0 and full dims.
- inputs/outputs: names, dtypes and shapes as the model file declares them (outputs are not in
  kiln's signature), dynamic dims as -1.
- ``dynamic_batching`` (batched models only; Triton refuses preferred sizes above the max):
  preferred sizes are the batch sizes ``kiln bench`` measured within the max, else powers of two,
  plus the max; a queue delay of ``queue_delay_us``. Triton's openvino backend compiles the IR at a
  static batch of ``max_batch_size`` (``ov::set_batch``) and fails smaller batches unless
  ``ENABLE_BATCH_PADDING`` is set, so openvino models prefer the max alone and pad.
- one CPU instance (GPU for tensorrt) with the thread count kiln measured with: the model's
  ``results.json`` cell for this artifact, else the build's (manifest execution info). ONNX
  Runtime: ``intra_op_thread_count`` (``inter_op_thread_count`` 1, sequential, as kiln runs it);
  OpenVINO: ``INFERENCE_NUM_THREADS``, ``NUM_STREAMS``, ``PERFORMANCE_HINT``, ``HINT_BF16`` for bf16.
  Triton's openvino backend has no f32 precision pin (on a CPU with native bf16 the plugin then
  runs fp32 IR in bf16); OVMS's ``plugin_config`` does pin ``INFERENCE_PRECISION_HINT``.
- a dynamic non-batch dim in an openvino model sets ``RESHAPE_IO_LAYERS``: the backend compares a
  config's -1 against the IR's bounded range (``1..16``) as a mismatch.

What each target's artifact is to a server is its registry row's ``serving``
(:class:`kiln.targets.shipping.Serving`: backend, file, platform, instance kind, OVMS or not) and
its backend parameters the target's :meth:`~kiln.targets.base.Target.triton_parameters`.

Refused (``ConfigError``, exit 2): artifacts no backend of either server loads (a row whose
``serving`` says why: eager, AOTInductor, Core ML, ExecuTorch), stateful OpenVINO IR (a causal
LM's cache lives in the IR's state: it needs a sequence batcher), an artifact that failed its gate,
and one whose gate did not run unless ``allow_ungated``. Every model is written under a temporary
folder beside ``out`` and renamed into place only once all of them are complete; a model of the
same name is replaced whole.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, MissingDependencyError
from kiln.manifest import Manifest
from kiln.results import MeasuredCell, Results
from kiln.spec import batch_dim
from kiln.store import MANIFEST, read_json, sha256_file, write_json
from kiln.targets import REGISTRY, implementation
from kiln.targets.base import ServedRun
from kiln.targets.shipping import Serving

VERSION = "1"  # the one version folder each model gets
OVMS_CONFIG = "config.json"
DEFAULT_QUEUE_DELAY_US = 500  # half a millisecond: a batch forms without doubling a small model's latency

# One row per dtype: numpy's name, ONNX's TensorProto name, OpenVINO's element type, Triton's type.
DTYPES = (
    ("bool", "BOOL", "boolean", "TYPE_BOOL"),
    ("uint8", "UINT8", "u8", "TYPE_UINT8"),
    ("uint16", "UINT16", "u16", "TYPE_UINT16"),
    ("uint32", "UINT32", "u32", "TYPE_UINT32"),
    ("uint64", "UINT64", "u64", "TYPE_UINT64"),
    ("int8", "INT8", "i8", "TYPE_INT8"),
    ("int16", "INT16", "i16", "TYPE_INT16"),
    ("int32", "INT32", "i32", "TYPE_INT32"),
    ("int64", "INT64", "i64", "TYPE_INT64"),
    ("float16", "FLOAT16", "f16", "TYPE_FP16"),
    ("float32", "FLOAT", "f32", "TYPE_FP32"),
    ("float64", "DOUBLE", "f64", "TYPE_FP64"),
    ("bfloat16", "BFLOAT16", "bf16", "TYPE_BF16"),
    ("string", "STRING", "string", "TYPE_STRING"),
)
ONNX_TYPES = {onnx: name for name, onnx, _, _ in DTYPES}
OV_TYPES = {ov: name for name, _, ov, _ in DTYPES}
TRITON_TYPES = {name: triton for name, _, _, triton in DTYPES}
OV_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # as kiln compiles it; quantized IR: f32


@dataclass(frozen=True)
class Tensor:
    """One input or output as the model file declares it; ``None`` marks a dynamic dim."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Described:
    """What a server needs to know about one artifact: its I/O and the files it loads."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    files: dict[str, str]  # name in the version folder -> name in the artifact folder


@dataclass(frozen=True)
class Measured:
    """How kiln ran the artifact: threads (None: the runtime's default), streams, mode, batches."""

    threads: int | None
    streams: int | None
    mode: str
    batches: tuple[int, ...]
    source: str  # where the figures come from, written into config.pbtxt's header


def serving(target: str) -> Serving | str:
    """How a server loads this target's artifacts (its registry row), or why none does."""
    spec = REGISTRY.get(target)
    return spec.serving if spec is not None else f"a {target} artifact, a target this kiln does not know"


def served(manifest: Manifest) -> Serving:
    """The row's :class:`Serving` of an artifact :func:`refusal` let through."""
    how = serving(manifest.target)
    if isinstance(how, str):
        raise RuntimeError(f"kiln bug: {manifest.key} ({how}) reached the repository writer past refusal()")
    return how


def loads() -> str:
    """Which targets each server loads, in words, from the registry."""
    rows = [(name, s) for name, spec in REGISTRY.items() if isinstance(s := spec.serving, Serving)]
    triton = [f"{s.what} ({name})" for name, s in rows]
    ovms = [s.what for _, s in rows if s.ovms]
    return f"Triton loads {_words(triton)}; OVMS loads {_words(ovms)}"


def _words(items: list[str]) -> str:
    return " and ".join(filter(None, (", ".join(items[:-1]), items[-1]))) if items else "nothing"


def refusal(manifest: Manifest, allow_ungated: bool = False) -> str | None:
    """Why this artifact does not go into a repository (no server loads it, or it did not pass
    its gate), or ``None`` when it does."""
    if manifest.gate.passed is False:
        return f"{manifest.key} failed its gate ({', '.join(manifest.gate.breaches) or manifest.gate.reason}); fix it first"
    if manifest.gate.passed is None and not allow_ungated:
        return f"{manifest.key}'s gate did not run ({manifest.gate.reason}); pass --allow-ungated to serve it anyway"
    how = serving(manifest.target)
    if isinstance(how, str):
        return f"{manifest.key} is {how}; {loads()}: build one of those targets, or serve this one with kiln serve"
    if how.stateful_refusal is not None and manifest.execution.get("stateful"):
        return f"{manifest.key} is {how.stateful_refusal}"
    return None


def model_name(manifest: Manifest) -> str:
    """``<model>-<target>-<precision>[-<prune>]``: unique per artifact of a model."""
    return f"{manifest.model}-{manifest.key}"


def _onnx_tensor(value: Any) -> Tensor:
    import onnx

    kind = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim)
    return Tensor(value.name, ONNX_TYPES.get(onnx.TensorProto.DataType.Name(kind.elem_type), "unknown"), dims)


def _external_files(graph: Any) -> set[str]:
    """The external-data files an ONNX graph's initializers (and subgraphs') point to."""
    import onnx

    found = {
        entry.value
        for init in graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in (attr.GRAPH, attr.GRAPHS) else []:
                found |= _external_files(sub)
    return found


def describe_onnx(path: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], set[str]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_onnx_tensor(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(_onnx_tensor(v) for v in model.graph.output), _external_files(model.graph)


def describe_ir(path: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    from kiln.targets import OPENVINO, block_imports

    if not OPENVINO.installed:
        raise MissingDependencyError(f"reading {path}'s inputs and outputs needs {OPENVINO.install_hint}")
    block_imports()
    import openvino as ov

    def tensor(port: Any) -> Tensor:
        dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return Tensor(port.get_any_name(), OV_TYPES.get(port.get_element_type().get_type_name(), "unknown"), dims)

    model = ov.Core().read_model(str(path))
    return tuple(tensor(p) for p in model.inputs), tuple(tensor(p) for p in model.outputs)


def describe(folder: Path, manifest: Manifest) -> Described:
    """The artifact's I/O, read from the file the server loads (or, for a TensorRT engine, from
    the ONNX it was built from: an engine is readable only with TensorRT on its GPU)."""
    main = folder / manifest.main_file
    how = served(manifest)
    if how.io_from == "onnx":
        inputs, outputs, external = describe_onnx(main)
        files = {how.model_file: manifest.main_file} | {name: name for name in external}
        return Described(inputs, outputs, files)
    if how.io_from == "ir":
        inputs, outputs = describe_ir(main)
        weights = str(Path(how.model_file).with_suffix(".bin"))
        return Described(inputs, outputs, {how.model_file: manifest.main_file, weights: main.with_suffix(".bin").name})
    plan = read_json(folder / "plan.json") or {}
    onnx_path = folder / plan["onnx"] if plan.get("onnx") else folder.parent / manifest.export_dir / "model.onnx"
    if not onnx_path.is_file():
        raise ConfigError(
            f"{folder}: the ONNX this engine was built from ({onnx_path}) is missing, so its inputs and outputs "
            "are unknown; rebuild it with kiln build"
        )
    inputs, outputs, _ = describe_onnx(onnx_path)
    return Described(inputs, outputs, {how.model_file: manifest.main_file})


def measured(folder: Path, manifest: Manifest) -> Measured:
    """The thread settings and batch sizes kiln measured this artifact with."""
    data = read_json(folder.parent / "results.json")
    try:
        results = Results.model_validate(data) if data else None
    except ValueError:
        results = None  # a results.json of another kiln version: fall back to the build's figures
    cells = [c for c in (results.cells if results else []) if isinstance(c, MeasuredCell) and c.key == manifest.key]
    streams = manifest.execution.get("streams")
    if results and cells:
        reported = cells[0].runtime.model_extra or {}
        return Measured(
            cells[0].threads,
            reported.get("streams", streams),
            results.settings.mode,
            tuple(results.settings.batches),
            f"kiln bench {results.created} (results.json)",
        )
    threads = manifest.execution.threads
    return Measured(
        threads if isinstance(threads, int) else None, streams, "latency", (), f"kiln build {manifest.created}"
    )


def batch_size(manifest: Manifest, described: Described) -> int:
    """The batch dim's max when the model batches, else 0 (see the module docstring)."""
    sig = manifest.signature
    name = batch_dim(sig)
    if name is None or sig.dims[name].min != 1 or sig.dims[name].static:
        return 0
    if any(not spec.shape or spec.shape[0] != name for spec in sig.inputs):
        return 0
    if any(not t.shape or t.shape[0] is not None for t in (*described.inputs, *described.outputs)):
        return 0
    return sig.dims[name].max


def preferred_sizes(how: Serving, max_batch: int, batches: tuple[int, ...]) -> list[int]:
    if how.pads_batches:
        return [max_batch]  # the backend pads every batch to max_batch_size anyway
    sizes = {b for b in batches if 1 < b <= max_batch}
    if not sizes:
        sizes = {2**i for i in range(1, max_batch.bit_length()) if 2**i <= max_batch}
    return sorted(sizes | {max_batch})


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise MissingDependencyError(
            "writing a Triton model repository needs tritonclient's model_config_pb2 "
            "(pip install 'kiln[ship]' -c constraints.txt)"
        ) from err
    return model_config_pb2


def triton_config(name: str, manifest: Manifest, described: Described, run: Measured, queue_delay_us: int) -> Any:
    """The ``ModelConfig`` message for one artifact."""
    pb = _model_config_pb2()
    how = served(manifest)
    max_batch = batch_size(manifest, described)
    config = pb.ModelConfig(
        name=name, backend=how.backend, max_batch_size=max_batch, default_model_filename=how.model_file
    )
    if how.platform is not None:
        config.platform = how.platform
    config.version_policy.latest.num_versions = 1
    for tensors, add in ((described.inputs, config.input.add), (described.outputs, config.output.add)):
        for tensor in tensors:
            if tensor.dtype not in TRITON_TYPES:
                raise ConfigError(f"{name}: {tensor.name} has a dtype Triton has no type for; it cannot be served")
            io = add(name=tensor.name, data_type=pb.DataType.Value(TRITON_TYPES[tensor.dtype]))
            dims = [-1 if d is None else d for d in (tensor.shape[1:] if max_batch else tensor.shape)]
            if dims:
                io.dims.extend(dims)
            elif max_batch:  # a [batch] tensor: Triton needs one dim; the reshape drops it again
                io.dims.append(1)
                io.reshape.SetInParent()
            else:
                raise ConfigError(f"{name}: {tensor.name} is a scalar, which Triton cannot serve without a batch dim")
    if max_batch:
        config.dynamic_batching.preferred_batch_size.extend(preferred_sizes(how, max_batch, run.batches))
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if how.gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=1, kind=kind)
    for key, value in backend_parameters(manifest, described, run, max_batch).items():
        config.parameters[key].string_value = value
    return config


def backend_parameters(manifest: Manifest, described: Described, run: Measured, max_batch: int) -> dict[str, str]:
    """The backend's ``parameters``: kiln's measured settings, in the keys the target's backend reads."""
    skip = 1 if max_batch else 0
    run_as = ServedRun(
        precision=manifest.precision,
        mode=run.mode,
        threads=run.threads,
        streams=run.streams,
        max_batch=max_batch,
        dynamic_dims=any(d is None for t in described.inputs for d in t.shape[skip:]),
    )
    return implementation(manifest.target).triton_parameters(run_as)


def config_text(config: Any, manifest: Manifest, run: Measured) -> str:
    """``config.pbtxt``: the message in protobuf text format, parsed back to prove it is valid."""
    from google.protobuf import text_format

    body = text_format.MessageToString(config, use_short_repeated_primitives=True)
    parsed = text_format.Parse(body, type(config)())
    if parsed != config:
        raise RuntimeError(f"kiln bug: config.pbtxt for {config.name} does not round-trip through model_config_pb2")
    header = (
        f"# {config.name}: kiln {manifest.kiln_version} artifact {manifest.key} of {manifest.model}, "
        f"built {manifest.created}\n# thread settings from {run.source}\n"
    )
    return header + body


def ovms_entry(name: str, manifest: Manifest, run: Measured) -> dict[str, Any]:
    """One ``model_config_list`` entry. No ``shape``/``batch_size``: the IR (and ONNX) keep their
    dynamic ranges, which OVMS serves as they are; ``auto`` would reload the model per new shape."""
    # Strings: what OpenVINO's string properties take, whatever OVMS version parses them.
    plugin = {
        "PERFORMANCE_HINT": run.mode.upper(),
        "INFERENCE_PRECISION_HINT": OV_HINTS.get(manifest.precision, "f32"),
    }
    if run.threads:
        plugin["INFERENCE_NUM_THREADS"] = str(run.threads)
    if run.mode == "latency":
        plugin["NUM_STREAMS"] = str(run.streams or 1)
    return {"config": {"name": name, "base_path": name, "target_device": "CPU", "plugin_config": plugin}}


def check_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest records, as it recorded it: the repository holds the bytes that
    passed the gate, or nothing."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file() or path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise ConfigError(f"{path} differs from what its manifest records; rebuild it with kiln build")


def _write_model(folder: Path, dest: Path, name: str, manifest: Manifest, queue_delay_us: int) -> dict[str, Any]:
    check_files(folder, manifest)
    described = describe(folder, manifest)
    run = measured(folder, manifest)
    config = triton_config(name, manifest, described, run, queue_delay_us)
    version = dest / VERSION
    version.mkdir(parents=True)
    for loaded, stored in described.files.items():
        (version / loaded).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / stored, version / loaded)
    (dest / "config.pbtxt").write_text(config_text(config, manifest, run))
    shutil.copyfile(folder / MANIFEST, dest / MANIFEST)
    return ovms_entry(name, manifest, run)


def merged_ovms_config(path: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An existing ``config.json`` with these models added or replaced (everything else kept)."""
    if path.exists():
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("model_config_list", []), list):
            raise ConfigError(f"{path} is not an OVMS config (no model_config_list list); move it away and run again")
    else:
        data = {}
    kept = [e for e in data.get("model_config_list", []) if e.get("config", {}).get("name") not in entries]
    return {**data, "model_config_list": kept + list(entries.values())}


def write_model_repository(
    artifacts: list[Path],
    out: Path,
    *,
    allow_ungated: bool = False,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> list[Path]:
    """Lay out ``out/<name>/config.pbtxt`` and ``out/<name>/1/<files>`` for each built artifact
    folder, and ``out/config.json`` for OVMS; returns the model folders. Nothing in ``out`` changes
    unless every artifact is servable, passed its gate and holds the files its manifest records."""
    manifests = [(Path(folder), Manifest.read(Path(folder))) for folder in artifacts]
    for _, manifest in manifests:
        if (why := refusal(manifest, allow_ungated)) is not None:
            raise ConfigError(why)
    names = [model_name(m) for _, m in manifests]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"two artifacts would both be model {twice[0]!r}; pass each artifact once")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        ovms: dict[str, dict[str, Any]] = {}
        for (folder, manifest), name in zip(manifests, names, strict=True):
            entry = _write_model(folder, staging / name, name, manifest, queue_delay_us)
            how = serving(manifest.target)
            if isinstance(how, Serving) and how.ovms:
                ovms[name] = entry
        ovms_config = merged_ovms_config(out / OVMS_CONFIG, ovms)
        out.mkdir(exist_ok=True)
        for name in names:  # each model replaced in one rename; the old one removed after
            final, old = out / name, staging / f".old-{name}"
            if final.exists():
                os.replace(final, old)
            os.replace(staging / name, final)
        write_json(out / OVMS_CONFIG, ovms_config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]
