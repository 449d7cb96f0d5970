"""The machine's memory bandwidth: a STREAM triad, the bound a decoding LLM runs against.

``a = b + s * c`` in float64 on three arrays each at least four times the last-level cache (the
STREAM rule), run by torch (one fused, multi-threaded kernel at the benchmark's thread count;
numpy would be single-threaded and make two passes). The fastest run is kept: other processes
only ever slow one down. Bytes are counted as STREAM does, 24 per element (b and c read, a
written; the write-allocate read is not counted). Cached per hardware fingerprint and thread
count beside the GEMM peak, under ``~/.cache/kiln/``, with the machine's load over the
measurement: a figure taken on a busy machine (other processes or the hypervisor sharing the
memory bus) is measured again once the machine is quiet, and one whose load is unknown at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from kiln.bench.load import machine_load, remeasure_reason, snapshot
from kiln.results import Bandwidth, Fingerprint
from kiln.store import cache_dir, write_json

BANDWIDTH_SCHEMA = "kiln.bandwidth/2"  # bump when the method changes: cached figures are re-measured
MIN_ARRAY_BYTES = 128 * 2**20
RUNS = 10


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 from sysfs; 32 MiB when unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=32 * 2**20)


def measure_bandwidth(threads: int, array_bytes: int | None = None, runs: int = RUNS) -> Bandwidth:
    """GB/s of the triad at ``threads``: the fastest of ``runs`` after two warm-up runs."""
    import torch

    llc = last_level_cache_bytes()
    size = array_bytes or max(4 * llc, MIN_ARRAY_BYTES)
    n = size // 8
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    before = snapshot()
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.empty(n, dtype=torch.float64)
        b = torch.rand(n, dtype=torch.float64, generator=gen)
        c = torch.rand(n, dtype=torch.float64, generator=gen)
        best = float("inf")
        for i in range(runs + 2):  # the first two fault the pages in
            start = time.perf_counter()
            torch.add(b, c, alpha=3.0, out=a)
            elapsed = time.perf_counter() - start
            best = min(best, elapsed) if i >= 2 else best
    finally:
        torch.set_num_threads(old)
    return Bandwidth(
        threads=threads,
        gbps=round(3 * n * 8 / best / 1e9, 2),
        method=(
            f"STREAM triad a = b + s*c, float64, torch at {threads} threads, 3 arrays of {size / 2**20:.0f} MiB "
            f"(>= 4x the {llc / 2**20:.0f} MiB last-level cache), fastest of {runs} runs, 24 bytes per element"
        ),
        last_level_cache_bytes=llc,
        machine_load=machine_load(before, snapshot()),
    )


def machine_bandwidth(fp: Fingerprint, threads: int, refresh: bool = False) -> Bandwidth:
    """Measured memory bandwidth, cached per fingerprint and thread count (measured again when
    the cached figure's method or load calls for it: :func:`kiln.bench.load.remeasure_reason`)."""
    path = cache_dir() / f"bandwidth-{fp.id}-t{threads}.json"
    cached = None
    if not refresh and path.is_file():
        try:
            cached = Bandwidth.model_validate_json(path.read_text())
        except ValueError:
            cached = None
    if cached is not None and (cached.schema_id != BANDWIDTH_SCHEMA or remeasure_reason(cached.machine_load)):
        cached = None
    if cached is None:
        cached = measure_bandwidth(threads).model_copy(update={"schema_id": BANDWIDTH_SCHEMA, "fingerprint": fp.id})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached.model_dump(mode="json", by_alias=True, exclude={"cache"}))
    return cached.model_copy(update={"cache": str(path)})
