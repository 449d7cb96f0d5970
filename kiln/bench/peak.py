"""The machine's peak: measured by short calibrated GEMMs, and the theoretical figure beside it.

Measured: a fully connected layer's product (M x 768 activations, 768 x 3072 constant weights)
in fp32, bf16 and int8 (int32 accumulation) at the benchmark's thread count, with every GEMM
kernel the runtimes run on this CPU: torch (its BLAS and oneDNN, which use AVX512-BF16 and
AMX-BF16/INT8 where present), ONNX Runtime's MLAS (MatMul, and MatMulInteger u8 x s8 on VNNI or
AMX), OpenVINO's CPU plugin (oneDNN's brgemm kernels; int8 as its low-precision transformations
make it from FakeQuantize, u8 activations x i8 weights, the way a quantized IR runs). M starts at
128 rows (a BERT-base FFN over 128 tokens) and grows until one product takes ``MIN_PRODUCT_S``,
so that a fast kernel (AMX) is measured compute-bound rather than by the runtime's call
overhead. The fastest single product over a short time budget is kept: several kernels because
one library can be far from the silicon (MKL takes a slow path on AMD CPUs).

The result is cached per hardware fingerprint and thread count under ``~/.cache/kiln/``
(``$XDG_CACHE_HOME`` respected) with the machine's load over the measurement
(:class:`kiln.results.MachineLoad`): a figure taken on a busy machine is measured again once the
machine is quiet, and one whose load is unknown (an older file) at once.

Theoretical: cores x clock x operations per cycle from the ISA (FMA width and ports, VNNI, AMX),
at the maximum clock (cpufreq's ``cpuinfo_max_freq``, else lscpu's "CPU max MHz"). Where neither
exists (VMs often expose no cpufreq) it falls back to ``/proc/cpuinfo``'s clock and says so: that
is the current or nominal clock, which a boosting core measures above. The measured figure is
what the fractions use; the reports say when it exceeds the estimate.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kiln.bench.load import machine_load, remeasure_reason, snapshot
from kiln.results import Fingerprint, MeasuredPeak, Peak, TheoreticalPeak
from kiln.store import cache_dir, write_json

PEAK_SCHEMA = "kiln.peak/5"  # bump when the method changes: cached figures are re-measured
# One fully connected layer as inference runs it: activations (M x K) times constant weights
# (K x N) the runtime may pre-pack. On the development machine a square 1024^3 GEMM of two inputs
# reached about half of this shape's rate with the same libraries, and real models beat it, so it
# was no peak. M grows through ROWS until one product takes MIN_PRODUCT_S: at 128 rows (0.6
# GOP) an int8 or bf16 kernel on AMX would finish in a fraction of a millisecond, where the
# runtime's call overhead (tens of microseconds) is no longer small.
K, N = 768, 3072
ROWS = (128, 512, 2048)
MIN_PRODUCT_S = 2e-3
Gemm = Callable[[], Any]


def _ops(m: int) -> int:
    return 2 * m * K * N


def _fastest(op: Gemm, seconds: float) -> float:
    """Seconds of the fastest single product over the time budget. Preemption by other processes
    only ever adds time, so the minimum is the machine's rate, not the load's."""
    for _ in range(3):  # first calls pick kernels, pack weights and fault pages in
        op()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        op()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def _best_rate(make: Callable[[int], Gemm | None], seconds: float) -> float | None:
    """Operations per second of one kernel: the best over the row counts tried, from 128 rows up
    until one product takes ``MIN_PRODUCT_S``; ``None`` where the kernel does not run."""
    best: float | None = None
    for m in ROWS:
        op = make(m)
        if op is None:
            return best
        elapsed = _fastest(op, seconds)
        best = max(best or 0.0, _ops(m) / elapsed)
        if elapsed >= MIN_PRODUCT_S:
            break
    return best


def _torch_gemm(dtype: str, threads: int, m: int) -> Gemm:
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-128, 128, (m, K), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (K, N), dtype=torch.int8, generator=gen)
        return lambda: torch._int_mm(a, b)
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    x, w = torch.randn(m, K, generator=gen).to(kind), torch.randn(K, N, generator=gen).to(kind)
    out = torch.empty(m, N, dtype=kind)
    return lambda: torch.matmul(x, w, out=out)


def _ort_gemm(dtype: str, threads: int, m: int) -> Gemm | None:
    """ONNX Runtime's MLAS kernels: MatMul (fp32) and MatMulInteger (u8 x s8, VNNI where present),
    the weights an initializer as in a real model."""
    if dtype == "bf16" or importlib.util.find_spec("onnxruntime") is None:
        return None
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "int8":
        a_type, c_type, op = TensorProto.UINT8, TensorProto.INT32, "MatMulInteger"
        x = rng.integers(0, 256, (m, K), dtype=np.uint8)
        w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    else:
        a_type, c_type, op = TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"
        x = rng.standard_normal((m, K), dtype=np.float32)
        w = rng.standard_normal((K, N), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "w"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", a_type, [m, K])],
        [helper.make_tensor_value_info("c", c_type, [m, N])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": x})


def _fake_quantize(node: Any, low: float, high: float, levels: int) -> Any:
    import numpy as np
    import openvino as ov

    lo, hi = (ov.opset13.constant(np.array(v, dtype=np.float32)) for v in (low, high))
    return ov.opset13.fake_quantize(node, lo, hi, lo, hi, levels)


def _openvino_gemm(dtype: str, threads: int, m: int) -> Gemm | None:
    """OpenVINO's CPU plugin (oneDNN's brgemm kernels) on a MatMul with constant weights: fp32,
    bf16 (the inference precision hint), or int8 as a quantized IR runs it (FakeQuantize on the
    activations, u8, and on the weights, i8, which the plugin folds into an int8 FullyConnected)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    import numpy as np

    from kiln.targets import block_imports

    block_imports()
    import openvino as ov

    rng = np.random.default_rng(0)
    x = ov.opset13.parameter([m, K], ov.Type.f32)
    w = ov.opset13.constant(rng.standard_normal((K, N), dtype=np.float32))
    a, b = x, w
    if dtype == "int8":
        a, b = _fake_quantize(x, 0.0, 2.55, 256), _fake_quantize(w, -1.27, 1.27, 255)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    compiled = ov.Core().compile_model(ov.Model([ov.opset13.matmul(a, b, False, False)], [x]), "CPU", config)
    request = compiled.create_infer_request()
    request.set_input_tensor(0, ov.Tensor(rng.random((m, K), dtype=np.float32)))
    return lambda: request.infer()


KERNELS = (("torch", _torch_gemm), ("onnxruntime", _ort_gemm), ("openvino", _openvino_gemm))


def measure_peak(threads: int, seconds: float = 0.5) -> MeasuredPeak:
    """Measured GFLOP/s (fp32, bf16) and GOP/s (int8) at ``threads``: the best of the GEMM
    kernels installed (torch's BLAS / oneDNN, ONNX Runtime's MLAS, OpenVINO's oneDNN brgemm);
    ``None`` where none runs. The machine's load over the measurement is recorded with it."""
    import torch

    old = torch.get_num_threads()
    # Keyed by field name (fp32_gflops, fp32_kernel, ...), validated into the model below.
    result: dict[str, Any] = {
        "threads": threads,
        "method": f"GEMM Mx{K}x{N} (M from {ROWS[0]} up to {ROWS[-1]} rows until a product takes "
        f">= {MIN_PRODUCT_S * 1e3:g} ms), constant weights, fastest product of {seconds:g} s per kernel",
    }
    before = snapshot()
    try:
        for dtype in ("fp32", "bf16", "int8"):
            rates: dict[str, float] = {}
            for name, make in KERNELS:
                try:
                    rate = _best_rate(partial(make, dtype, threads), seconds)
                except RuntimeError:
                    continue
                if rate is not None:
                    rates[name] = rate
            best = max(rates, key=rates.__getitem__) if rates else None
            result[f"{dtype}_gflops"] = round(rates[best] / 1e9, 1) if best else None
            result[f"{dtype}_kernel"] = best
    finally:
        torch.set_num_threads(old)
    result["machine_load"] = machine_load(before, snapshot())
    return MeasuredPeak.model_validate(result)


@dataclass(frozen=True)
class Clock:
    """The clock a theoretical peak is computed at, and whether it is the CPU's maximum."""

    mhz: float
    source: str  # "cpufreq", "lscpu" (maximum clocks) or "cpuinfo" (current or nominal)
    maximum: bool


def _cpufreq_max_mhz() -> float | None:
    """The highest ``cpuinfo_max_freq`` (kHz) of any CPU: the boost clock the kernel reports."""
    values = []
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"):
        try:
            values.append(int(path.read_text()) / 1e3)
        except (OSError, ValueError):
            continue
    return max(values) if values else None


def _lscpu_text() -> str:
    if shutil.which("lscpu") is None:
        return ""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _field_mhz(text: str, name: str) -> float | None:
    """The largest value of ``name: <MHz>`` lines (lscpu's "CPU max MHz", cpuinfo's "cpu MHz")."""
    values = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            try:
                values.append(float(value.strip().replace(",", ".")))
            except ValueError:
                continue
    return max(values) if values and max(values) > 0 else None


def cpu_clock(cpufreq_mhz: float | None = None, lscpu: str | None = None, cpuinfo: str | None = None) -> Clock | None:
    """The maximum clock (cpufreq's ``cpuinfo_max_freq``, else lscpu's "CPU max MHz"), else the
    clock ``/proc/cpuinfo`` reports, marked as not the maximum: under a hypervisor that is often
    the nominal clock, which a boosting core runs above. The arguments replace what is read from
    this machine (for tests)."""
    mhz = cpufreq_mhz if cpufreq_mhz is not None else _cpufreq_max_mhz()
    if mhz:
        return Clock(mhz, "cpufreq", True)
    mhz = _field_mhz(lscpu if lscpu is not None else _lscpu_text(), "CPU max MHz")
    if mhz:
        return Clock(mhz, "lscpu", True)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    mhz = _field_mhz(cpuinfo, "cpu MHz")
    return Clock(mhz, "cpuinfo", False) if mhz else None


def _cpu_id() -> tuple[str, int]:
    """(vendor, family) from /proc/cpuinfo."""
    vendor, family = "", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key.strip() == "cpu family" and not family:
                family = int(value.strip() or 0)
    except (OSError, ValueError):
        pass
    return vendor, family


def theoretical_peak(fp: Fingerprint, threads: int, clock: Clock | None = None) -> TheoreticalPeak:
    """cores x clock x ops/cycle. Intel server cores and AMD Zen 5 (family 26) have two 512-bit
    FMA pipes; Zen 4 runs 512-bit vectors as two 256-bit halves, so AVX-512 does not double its
    FMA rate over AVX2. ``clock`` replaces the clock read from this machine (for tests)."""
    flags = fp.flags
    found = clock if clock is not None else cpu_clock()
    cores = min(threads, fp.physical_cores)
    if found is None:
        return TheoreticalPeak(basis="clock unknown (no cpufreq, lscpu or /proc/cpuinfo clock)", max_clock_known=False)
    mhz = found.mhz
    vendor, family = _cpu_id()
    wide = flags.get("avx512f") and (vendor != "AuthenticAMD" or family >= 26)
    fp32 = 64 if wide else (32 if flags.get("avx2") or flags.get("avx512f") else 16)
    bf16 = 2 * fp32 if flags.get("avx512_bf16") else fp32
    int8 = 4 * fp32 if flags.get("avx512_vnni") else 2 * fp32
    if flags.get("amx_bf16"):
        bf16 = 1024
    if flags.get("amx_int8"):
        int8 = 2048
    scale = cores * mhz / 1e3
    where = {
        "cpufreq": "the maximum clock from cpufreq's cpuinfo_max_freq",
        "lscpu": "the maximum clock from lscpu's CPU max MHz",
        "cpuinfo": "/proc/cpuinfo's cpu MHz, the current or nominal clock: the maximum is unknown here (no "
        "cpufreq, no CPU max MHz in lscpu), and a core boosting past it measures above this estimate",
    }[found.source]
    return TheoreticalPeak(
        basis=f"{cores} cores x {mhz:.0f} MHz x ops/cycle (fp32 {fp32}, bf16 {bf16}, int8 {int8}) from CPU flags; "
        f"clock: {where}",
        fp32_gflops=round(scale * fp32, 1),
        bf16_gflops=round(scale * bf16, 1),
        int8_gflops=round(scale * int8, 1),
        clock_mhz=round(mhz, 1),
        clock_source=found.source,
        max_clock_known=found.maximum,
    )


def _cached(path: Path) -> MeasuredPeak | None:
    """The cached measurement if it was made by this method (``PEAK_SCHEMA``) at a load that
    does not call for measuring it again (:func:`kiln.bench.load.remeasure_reason`)."""
    try:
        cached = MeasuredPeak.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    if cached.schema_id != PEAK_SCHEMA or remeasure_reason(cached.machine_load) is not None:
        return None
    return cached


def machine_peak(fp: Fingerprint, threads: int, refresh: bool = False) -> Peak:
    """Measured (cached per fingerprint and thread count) and theoretical peaks."""
    path = cache_dir() / f"peak-{fp.id}-t{threads}.json"
    measured = None if refresh or not path.is_file() else _cached(path)
    if measured is None:
        measured = measure_peak(threads).model_copy(update={"schema_id": PEAK_SCHEMA, "fingerprint": fp.id})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, measured.model_dump(mode="json", by_alias=True))
    return Peak(measured=measured, theoretical=theoretical_peak(fp, threads), cache=str(path))
