"""``kiln bench --profile``: where an artifact's time goes, by its runtime's own profiler.

Run after the timed rounds, never inside them (profiling perturbs timing): each artifact is opened
again here, directly through its runtime's API with the options its runner uses, run a few times
under the profiler, and folded into one :class:`~kiln.results.OpProfile`: time by operator kind
and precision (with the ISA where the runtime names it), reorders and layout conversions, and the
share a quantized artifact left in fp32.

Sources: OpenVINO ``PERF_COUNT`` (``get_profiling_info``: node type, exec type, real time) and the
runtime model's ``runtimePrecision``; ONNX Runtime ``enable_profiling`` (the trace's node events:
op name, input types, duration); ``torch.profiler`` for eager and AOTInductor (self CPU time per
aten op, input dtypes); ExecuTorch's ETDump (the devtools Inspector's events: XNNPACK names its
ops with their data types). Other targets say why they have no profile.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.manifest import Manifest
from kiln.results import OpProfile, ProfileRow

RUNS = 5  # profiled runs after WARMUP: op times are averaged over them
WARMUP = 2
TOP_ROWS = 8  # (kind, precision) rows kept; the rest are "other"
FP32_FLAG = 0.25  # a quantized artifact with at least this share of its time in fp32 ops is flagged
LAYOUT = {"Reorder", "Transpose", "ReorderInput", "ReorderOutput"}
# Quantization's own conversions: not compute left in fp32, reported apart.
CONVERT = {
    "Convert",
    "FakeQuantize",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "quantize_per_tensor",
}
FULL_PRECISION = {"fp32", "eager"}
_COMPUTE = {"fp32", "bf16", "fp16", "int8", "int4", "int32", "int64", "bool"}


@dataclass(frozen=True)
class OpTime:
    """One executed operator: its kind, the precision it ran in, the ISA named, ms per run."""

    kind: str
    precision: str
    ms: float
    isa: str | None = None
    count: int = 1  # operators folded into this one (the same op seen in every profiled run)


def per_run(events: list[tuple[Any, OpTime]], runs: int) -> list[OpTime]:
    """Events of ``runs`` profiled runs, keyed by the op's identity, as one op per identity with
    its mean time per run (its count: how many times a run calls it)."""
    groups: dict[Any, list[OpTime]] = {}
    for key, op in events:
        groups.setdefault(key, []).append(op)
    return [
        OpTime(ops[0].kind, ops[0].precision, sum(o.ms for o in ops) / runs, ops[0].isa, max(1, round(len(ops) / runs)))
        for ops in groups.values()
    ]


_PRECISIONS = {
    "f32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "i8": "int8",
    "u8": "int8",
    "int8": "int8",
    "uint8": "int8",
    "quint8": "int8",
    "qint8": "int8",
    "c10::quint8": "int8",
    "c10::qint8": "int8",
    "i4": "int4",
    "u4": "int4",
    "int4": "int4",
    "i32": "int32",
    "int32": "int32",
    "i64": "int64",
    "int64": "int64",
    "long int": "int64",
    "int": "int32",
    "boolean": "bool",
    "bool": "bool",
}


def precision_name(raw: str | None) -> str:
    """A runtime's spelling of a type (``u8``, ``I8``, ``float``, ``c10::BFloat16``) as kiln's."""
    if not raw:
        return "unknown"
    name = raw.strip().lower().removeprefix("c10::")
    return _PRECISIONS.get(name, name)


def ov_isa(exec_type: str) -> str | None:
    """The ISA an OpenVINO exec type names (``brgemm_avx512_amx_I8`` -> ``AMX``)."""
    low = exec_type.lower()
    for token, isa in (("amx", "AMX"), ("vnni", "VNNI"), ("avx512", "AVX-512"), ("avx2", "AVX2"), ("sse42", "SSE4.2")):
        if token in low:
            return isa
    return "reference" if low.startswith("ref") else None


def fold(ops: list[OpTime], source: str, runs: int, quantized: bool) -> OpProfile:
    """The ops of one artifact as one table: rows by (kind, precision), the top ``TOP_ROWS`` and
    "other"; the precision, layout and fp32 shares; the fp32 flag for a quantized artifact."""
    total = sum(op.ms for op in ops)
    if total <= 0:
        return OpProfile(source=source, runs=runs, total_ms=0.0, unavailable="the profiler recorded no operator time")
    groups: dict[tuple[str, str], list[OpTime]] = {}
    for op in ops:
        groups.setdefault((op.kind, op.precision), []).append(op)
    rows = [
        ProfileRow(
            kind=kind,
            precision=precision,
            isa=", ".join(sorted({op.isa for op in members if op.isa})) or None,
            ops=sum(op.count for op in members),
            ms=round(sum(op.ms for op in members), 4),
            share=round(sum(op.ms for op in members) / total, 4),
        )
        for (kind, precision), members in groups.items()
    ]
    rows.sort(key=lambda r: -r.ms)
    if len(rows) > TOP_ROWS:
        rest = rows[TOP_ROWS - 1 :]
        ms = sum(r.ms for r in rest)
        other = ProfileRow(kind="other", precision="mixed", ops=sum(r.ops for r in rest), ms=round(ms, 4), share=0.0)
        rows = [*rows[: TOP_ROWS - 1], other.model_copy(update={"share": round(ms / total, 4)})]
    shares: dict[str, float] = {}
    for op in ops:
        shares[op.precision] = shares.get(op.precision, 0.0) + op.ms / total
    layout = [op for op in ops if op.kind in LAYOUT]
    fp32 = [op for op in ops if op.precision == "fp32" and op.kind not in LAYOUT | CONVERT]
    kinds: dict[str, int] = {}
    spent: dict[str, float] = {}
    for op in fp32:
        kinds[op.kind] = kinds.get(op.kind, 0) + op.count
        spent[op.kind] = spent.get(op.kind, 0.0) + op.ms
    profile = OpProfile(
        source=source,
        runs=runs,
        total_ms=round(total, 4),
        rows=rows,
        precision_shares={k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        layout_share=round(sum(op.ms for op in layout) / total, 4),
        layout_ops=sum(op.count for op in layout),
        fp32_share=round(sum(op.ms for op in fp32) / total, 4) if quantized else None,
        # the kinds that took the most fp32 time first: the flag names the ones worth fixing
        fp32_ops=dict(sorted(kinds.items(), key=lambda kv: -spent[kv[0]])) if quantized else {},
    )
    return profile.model_copy(update={"flag": fp32_flag(profile)})


def fp32_flag(profile: OpProfile) -> str | None:
    """A quantized artifact's flag when a large share of its time stayed in fp32 ops."""
    if profile.fp32_share is None or profile.fp32_share < FP32_FLAG:
        return None
    count = sum(profile.fp32_ops.values())
    kinds = ", ".join(f"{kind} ×{n}" for kind, n in list(profile.fp32_ops.items())[:4])
    return f"{profile.fp32_share:.0%} of the time is in {count} ops left in fp32: {kinds}"


# --- the runtimes -------------------------------------------------------------------------------


def _openvino(folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int) -> tuple[list[OpTime], str]:
    import openvino as ov

    from kiln.targets.openvino import HINTS

    core = ov.Core()
    model = core.read_model(str(folder / manifest.main_file))
    # The runner's configuration (kiln.targets.openvino.compile_model), with the counters on.
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": HINTS.get(manifest.precision, "f32"),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "PERF_COUNT": True,
    }
    compiled = core.compile_model(model, "CPU", config)
    runtime: dict[str, str] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if "runtimePrecision" in info:
            runtime[node.get_friendly_name()] = str(info["runtimePrecision"].astype(str))
    request = compiled.create_infer_request()
    # The plugin's counters are running means over every inference since compile (the first,
    # which packs weights, included): the profiled runs' mean is read as the difference of totals.
    for _ in range(WARMUP):
        request.infer(inputs)
    before = {info.node_name: info.real_time.total_seconds() * 1e3 for info in request.get_profiling_info()}
    for _ in range(RUNS):
        request.infer(inputs)
    times: dict[str, float] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for info in request.get_profiling_info():
        if info.status != info.Status.EXECUTED:
            continue
        total = info.real_time.total_seconds() * 1e3 * (WARMUP + RUNS) - before.get(info.node_name, 0.0) * WARMUP
        times[info.node_name] = max(total, 0.0)
        kinds[info.node_name] = (info.node_type, info.exec_type)
    ops = []
    for name, ms in times.items():
        kind, exec_type = kinds[name]
        suffix = exec_type.rsplit("_", 1)[-1] if "_" in exec_type else ""
        precision = precision_name(runtime.get(name) or suffix)
        ops.append(OpTime(kind, precision, ms / RUNS, ov_isa(exec_type)))
    return ops, "OpenVINO PERF_COUNT (get_profiling_info, runtimePrecision)"


_ORT_INT8 = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "QAttention", "DynamicQuantizeMatMul")


def ort_kind(op_name: str) -> str:
    """An ONNX Runtime op's kind: fused and quantized variants folded into their family."""
    for prefix in ("QLinear", "Fused", "Dynamic"):
        if op_name.startswith(prefix) and op_name not in CONVERT:
            op_name = op_name.removeprefix(prefix)
    if op_name in ("Gemm", "QGemm", "MatMulInteger", "MatMulNBits", "QuantizeMatMul"):
        return "MatMul"
    return "Conv" if op_name == "ConvInteger" else op_name


def ort_precision(op_name: str, input_types: list[dict[str, Any]]) -> str:
    if op_name == "MatMulNBits":
        return "int4"
    if op_name.startswith(_ORT_INT8):
        return "int8"
    first = next(iter(input_types[0]), None) if input_types else None
    return precision_name(first)


def _onnxruntime(folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int) -> tuple[list[OpTime], str]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kiln-ort-profile-") as tmp:
        # The runner's session options (kiln.targets.onnxruntime.session), with profiling on.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(folder / manifest.main_file), so, providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        for _ in range(WARMUP + RUNS):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    events = []
    nodes = sorted(
        (e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    # Every run records the same nodes: the last RUNS runs' share of them, after the warm-up.
    for event in nodes[len(nodes) - len(nodes) // (WARMUP + RUNS) * RUNS :]:
        args = event.get("args", {})
        name = args.get("op_name", "")
        op = OpTime(ort_kind(name), ort_precision(name, args.get("input_type_shape", [])), event["dur"] / 1e3)
        events.append((event["name"], op))
    return per_run(events, RUNS), "ONNX Runtime enable_profiling (node events)"


_TORCH_KINDS = {
    "addmm": "MatMul",
    "mm": "MatMul",
    "bmm": "MatMul",
    "matmul": "MatMul",
    "linear": "MatMul",
    "baddbmm": "MatMul",
    "_weight_int8pack_mm": "MatMul",
    "_weight_int4pack_mm": "MatMul",
    "qlinear_pointwise": "MatMul",
    "mkldnn_convolution": "Conv",
    "convolution": "Conv",
    "_convolution": "Conv",
    "_slow_conv2d_forward": "Conv",
    "thnn_conv2d": "Conv",
    "conv2d": "Conv",
    "conv1d": "Conv",
    "qconv_pointwise": "Conv",
    "qconv2d_pointwise": "Conv",
    "_scaled_dot_product_flash_attention_for_cpu": "Attention",
    "scaled_dot_product_attention": "Attention",
    "_softmax": "Softmax",
    "softmax": "Softmax",
    "native_layer_norm": "LayerNorm",
    "native_batch_norm": "BatchNorm",
    "copy_": "Copy",
    "contiguous": "Copy",
    "clone": "Copy",
}


def torch_kind(name: str) -> str:
    short = name.rsplit("::", 1)[-1]
    return _TORCH_KINDS.get(short, short)


def torch_precision(name: str, dtypes: list[str]) -> str:
    short = name.rsplit("::", 1)[-1]
    if short == "_weight_int4pack_mm":
        return "int4"
    if short.startswith(("q", "_weight_int8")) or name.startswith(("quantized::", "onednn::q")):
        return "int8"
    # The first tensor's dtype; an op on no tensor (empty, a view's metadata) has none.
    known = (precision_name(d) for d in dtypes if d)
    return next((p for p in known if p in _COMPUTE), "-")


def _torch_program(folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int) -> tuple[list[OpTime], str]:
    return _torch(folder, manifest, inputs, threads, aoti=False)


def _torch_aoti(folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int) -> tuple[list[OpTime], str]:
    return _torch(folder, manifest, inputs, threads, aoti=True)


def _torch(
    folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int, *, aoti: bool
) -> tuple[list[OpTime], str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kiln.tensors import set_threads, to_tensors

    set_threads(threads)
    path = str(folder / manifest.main_file)
    fn = torch._inductor.aoti_load_package(path) if aoti else torch.export.load(path).module()
    args = to_tensors(manifest.signature, inputs, "cpu")
    with torch.inference_mode():
        for _ in range(WARMUP):
            fn(*args)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(RUNS):
                fn(*args)
    events = []
    for event in prof.events():
        if event.self_cpu_time_total <= 0 or event.name.startswith(("[", "ProfilerStep")):
            continue
        dtypes = [str(d) for d in getattr(event, "input_dtypes", None) or []]
        op = OpTime(torch_kind(event.name), torch_precision(event.name, dtypes), event.self_cpu_time_total / 1e3)
        events.append(((event.name, tuple(dtypes), str(event.input_shapes)), op))
    what = (
        "AOTInductor package: the aten ops it calls; its generated C++ kernels are not seen"
        if aoti
        else "eager program"
    )
    return per_run(events, RUNS), f"torch.profiler (self CPU time per op, {what})"


_XNNPACK = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "QC8": "int8", "QS8": "int8", "QU8": "int8", "QD8": "int8"}
_XNNPACK |= {"QC4W": "int4", "QB4W": "int4", "X32": "fp32", "X16": "fp16", "X8": "int8"}
_ET_WRAPPERS = {"DELEGATE_CALL", "Method::execute", "Method::init", "Program::load_method"}


def xnnpack_op(name: str) -> tuple[str, str]:
    """An XNNPACK operator's ETDump name as (kind, precision): ``Convolution (NHWC, QC8) IGEMM #1``
    is (Convolution, int8); ``Transpose (ND, X32) #2`` (Transpose, fp32): X32 moves 32-bit data."""
    kind, _, rest = name.partition(" (")
    tokens = [t.strip() for t in rest.split(")", 1)[0].split(",")]
    return kind.strip(), next((_XNNPACK[t] for t in tokens if t in _XNNPACK), "-")


def _executorch(folder: Path, manifest: Manifest, inputs: dict[str, Any], threads: int) -> tuple[list[OpTime], str]:
    from executorch.devtools import Inspector

    from kiln.targets.executorch.runner import runtime, set_runtime_threads
    from kiln.tensors import to_tensors

    set_runtime_threads(threads)
    _, lib = runtime()
    module = lib._load_for_executorch(str(folder / manifest.main_file), enable_etdump=True)
    args = tuple(to_tensors(manifest.signature, inputs, "cpu"))
    for _ in range(WARMUP + RUNS):
        module.forward(args)
    with tempfile.TemporaryDirectory(prefix="kiln-etdump-") as tmp:
        path = str(Path(tmp) / "run.etdp")
        module.write_etdump_result_to_file(path, str(Path(tmp) / "debug.bin"))
        with warnings.catch_warnings():  # "Output Buffer not found": no tensor data asked for
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=path)
    events = []
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None or event.name in _ET_WRAPPERS or len(event.perf_data.raw) < WARMUP + RUNS:
                continue
            # Without an ETRecord the runtime names only delegated ops; its own kernels are OPERATOR_CALL.
            kind, precision = xnnpack_op(event.name) if event.is_delegated_op else ("non-delegated op", "-")
            for ms in event.perf_data.raw[WARMUP:]:
                events.append(((block.name, event.name, kind), OpTime(kind, precision, float(ms))))
    return per_run(events, RUNS), "ExecuTorch ETDump (the Inspector's events; XNNPACK names its ops)"


# Keyed by the registry row's `profiler` (kiln.targets.TargetSpec): a target names the profiler
# its artifacts are read with, so a new target needs no change here unless it brings a new one.
_PROFILERS: dict[str, Callable[[Path, Manifest, dict[str, Any], int], tuple[list[OpTime], str]]] = {
    "perf-counts": _openvino,
    "ort-trace": _onnxruntime,
    "torch-program": _torch_program,
    "torch-aoti": _torch_aoti,
    "etdump": _executorch,
}


def profile_artifact(folder: Path, manifest: Manifest, batch: int, threads: int) -> OpProfile:
    """The artifact's op profile at ``batch``, or an :class:`OpProfile` saying why there is none."""
    from kiln.bench.worker import prepare_inputs
    from kiln.targets import REGISTRY

    spec = REGISTRY.get(manifest.target)
    profiler = _PROFILERS.get(spec.profiler or "") if spec is not None else None
    if profiler is None:
        why = f"kiln has no profiler for {manifest.target} yet"
        return OpProfile(source="none", runs=0, total_ms=0.0, unavailable=why)
    if manifest.signature.generative:
        return OpProfile(source="none", runs=0, total_ms=0.0, unavailable="causal LMs are not profiled yet")
    inputs = prepare_inputs(manifest.signature, batch, 1, 0)[0]
    ops, source = profiler(folder, manifest, inputs, threads)
    return fold(ops, source, RUNS, manifest.precision not in FULL_PRECISION)
