"""Number formats shared by the Markdown and HTML reports."""

from __future__ import annotations

from kiln.results import CellBase, Results


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return (f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + unit


def ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def accuracy(cell: CellBase) -> str:
    acc = cell.accuracy
    if acc is None:
        return "-"
    return f"{acc.metric} {acc.value:.4f} ({-acc.drop:+.4f})"


def parity(cell: CellBase) -> str:
    if cell.parity_passed is None:
        return "-"
    verdict = "pass" if cell.parity_passed else "FAIL"
    return f"{verdict} {cell.parity_worst or ''}".strip() + (" (simulated)" if cell.simulated else "")


def fingerprint_lines(results: Results) -> list[tuple[str, str]]:
    fp = results.fingerprint
    flags = ", ".join(f for f, on in fp.flags.items() if on) or "none of note"
    gpus = "; ".join(f"{g.name} (driver {g.driver})" for g in fp.gpus) or "none"
    tools = ", ".join(f"{k} {v}" for k, v in fp.toolchain.items())
    m, t = results.peak.measured, results.peak.theoretical
    load = results.machine_load
    busy = (
        f"load average {load.load_average_before[0]} before, {load.load_average_after[0]} after the timed "
        f"cells, on {load.cpus} CPUs"
        if load and load.load_average_before and load.load_average_after
        else "not recorded"
    )
    bandwidth = results.bandwidth
    lines = [
        ("fingerprint", fp.id),
        ("machine load", busy),
        ("cpu", f"{fp.cpu} ({fp.arch}), {fp.physical_cores} physical / {fp.logical_cores} logical cores"),
        ("flags", flags),
        ("memory", f"{fp.memory_gib} GiB"),
        ("gpu", gpus),
        ("os", f"{fp.os}, Python {fp.python}"),
        ("toolchains", tools),
        (
            "peak (measured)",
            f"fp32 {num(m.fp32_gflops)} GFLOP/s, bf16 {num(m.bf16_gflops)} GFLOP/s, "
            f"int8 {num(m.int8_gflops)} GOP/s at {m.threads} threads ({m.method or ''})",
        ),
        (
            "peak (theoretical)",
            f"fp32 {num(t.fp32_gflops)}, bf16 {num(t.bf16_gflops)}, int8 {num(t.int8_gflops)} ({t.basis or ''})",
        ),
    ]
    if bandwidth is not None:
        lines.append(("memory bandwidth (measured)", f"{bandwidth.gbps:g} GB/s ({bandwidth.method})"))
    return lines


def settings_line(results: Results) -> str:
    s = results.settings
    if s.new_tokens is not None:
        prompts = ", ".join(map(str, s.prompt_tokens or []))
        return (
            f"generation: greedy, {s.new_tokens} new tokens after seeded prompts of {prompts} tokens, batch 1, "
            f"{s.threads} threads; a run is one generation per prompt length; per cell and round: warm-up >= "
            f"{s.warmup_seconds} s and >= {min(1, s.warmup_iters)} run, then timed runs until >= {s.min_seconds} s "
            f"and >= {s.generations} generations per prompt length in all, split over {s.rounds} interleaved "
            f"rounds; unstable above CV {s.cv_threshold:.0%}"
        )
    inflight = f", {s.requests} requests in flight" if s.mode == "throughput" else ""
    return (
        f"{s.mode} mode{inflight}, {s.threads} threads, batches {', '.join(map(str, s.batches))}; "
        f"per cell and round: warm-up >= {s.warmup_seconds} s and >= {s.warmup_iters} runs (1 after the first "
        f"round), then timed runs until >= "
        f"{s.min_seconds} s and >= {s.min_iters} runs in all, split over {s.rounds} interleaved rounds; "
        f"unstable above CV {s.cv_threshold:.0%}"
    )
