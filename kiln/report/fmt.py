"""Number formats shared by the Markdown and HTML reports."""

from __future__ import annotations

import math

from kiln.results import BASELINE, CellBase, MachineLoad, MeasuredCell, Results


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


def speedup(cell: CellBase) -> str:
    """The speed-up with its interval, "4.10× [3.90–4.30]", or the bare ratio without one."""
    low, high = cell.speedup_ci_low, cell.speedup_ci_high
    if cell.speedup_vs_eager is None or low is None or high is None:
        return ratio(cell.speedup_vs_eager)
    return f"{cell.speedup_vs_eager:.2f}× [{low:.2f}–{high:.2f}]"


def stalls(cell: MeasuredCell) -> str:
    """The share of samples over the stall threshold, "2.1% (5)", or "-" where not counted."""
    st = cell.stalls
    if st is None:
        return "-"
    return "0" if st.count == 0 else f"{st.share:.1%} ({st.count})"


def machine_load(results: Results) -> str:
    """What else the machine was doing while the cells were timed."""
    load = results.machine_load
    if not load or not load.load_average_before or not load.load_average_after:
        return "not recorded"
    line = (
        f"load average {load.load_average_before[0]} before, {load.load_average_after[0]} after the timed "
        f"cells, on {load.cpus} CPUs"
    )
    if load.other_cpus is not None:
        line += (
            f"; other processes kept {load.other_cpus:.2f} CPUs busy on average over the "
            f"{load.timed_seconds:g} s of timed cells"
        )
    if load.steal_share:
        line += f"; the hypervisor took {load.steal_share:.1%} of CPU time (steal)"
    return line


def threading(results: Results) -> str:
    """The OpenMP runtimes, torch threads and steering variables the workers ran with."""
    seen: dict[str, list[str]] = {}
    for c in results.cells:
        if isinstance(c, MeasuredCell) and c.threading is not None:
            t = c.threading
            libs = ", ".join(t.openmp_libraries) or "no OpenMP runtime"
            torch = f"; torch {t.torch_threads} threads ({t.torch_backend})" if t.torch_threads else ""
            env = ", ".join(f"{k}={v}" for k, v in t.env.items()) or "no OMP_/KMP_/GOMP_/MKL_ variable set"
            seen.setdefault(f"{libs}{torch}; {env}", []).append(c.key)
    if not seen:
        return "not recorded"
    return " | ".join(f"{', '.join(dict.fromkeys(keys))}: {what}" for what, keys in seen.items())


def peak_check(results: Results) -> list[str]:
    """Measured against theoretical per precision; where the measurement is above the estimate,
    why, and the clock the measurement implies."""
    m, t = results.peak.measured, results.peak.theoretical
    out = []
    for name, unit in (("fp32", "GFLOP/s"), ("bf16", "GFLOP/s"), ("int8", "GOP/s")):
        measured, theory = getattr(m, f"{name}_gflops"), getattr(t, f"{name}_gflops")
        if not measured or not theory:
            continue
        line = f"{name}: measured {num(measured)} of theoretical {num(theory)} {unit} ({measured / theory:.0%})"
        if measured > theory:
            if t.max_clock_known is False and t.clock_mhz:
                line += (
                    f": above the estimate, whose {t.clock_mhz:.0f} MHz clock is not the maximum (unknown here); "
                    f"the measurement implies the cores ran at {t.clock_mhz * measured / theory:.0f} MHz or more"
                )
            else:
                line += ": above the estimate at the maximum clock; the ops per cycle from the CPU flags undercount"
        out.append(line)
    return out


def measured_at(load: MachineLoad | None) -> str:
    """The load a cached machine figure was measured at, and whether that counts as busy."""
    if load is None:
        return "at a load not recorded (an older kiln's figure)"
    facts = [f"load average {load.load_average_before[0]:g}"] if load.load_average_before else []
    if load.other_cpus is not None:
        facts.append(f"other processes {load.other_cpus:.2f} CPUs")
    if load.steal_share is not None:
        facts.append(f"steal {load.steal_share:.1%}")
    busy = load.busy()
    return f"on a busy machine ({busy}; {', '.join(facts)})" if busy else f"on a quiet machine ({', '.join(facts)})"


def figure_warnings(results: Results) -> list[str]:
    """One line per machine figure that is not what it says: measured on a busy machine (or at
    an unknown load), or a peak a cell beat."""
    out = []
    figures = [("peak", results.peak.measured.machine_load)]
    if results.bandwidth is not None:
        figures.append(("memory bandwidth", results.bandwidth.machine_load))
    for name, load in figures:
        if load is None or load.busy():
            out.append(
                f"The machine's {name} was measured {measured_at(load)}: it may read low, and fractions of it high. "
                "kiln measures it again once the machine is quiet (or now: kiln bench --refresh-peak)."
            )
    for r in results.peak.raised or []:
        unit = "GOP/s" if r.precision == "int8" else "GFLOP/s"
        out.append(
            f"The {r.precision} peak is {r.cell}'s {num(r.gflops)} {unit}, which beat the measured {num(r.measured_gflops)}: "
            f"every {r.precision} fraction of peak here is counted against it."
        )
    return out


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
    bandwidth = results.bandwidth
    lines = [
        ("fingerprint", fp.id),
        ("machine load", machine_load(results)),
        ("threading", threading(results)),
        ("cpu", f"{fp.cpu} ({fp.arch}), {fp.physical_cores} physical / {fp.logical_cores} logical cores"),
        ("flags", flags),
        ("memory", f"{fp.memory_gib} GiB"),
        ("gpu", gpus),
        ("os", f"{fp.os}, Python {fp.python}"),
        ("toolchains", tools),
        (
            "peak (measured)",
            f"fp32 {num(m.fp32_gflops)} GFLOP/s, bf16 {num(m.bf16_gflops)} GFLOP/s, "
            f"int8 {num(m.int8_gflops)} GOP/s at {m.threads} threads ({m.method or ''}), "
            f"measured {measured_at(m.machine_load)}",
        ),
        (
            "peak (theoretical)",
            f"fp32 {num(t.fp32_gflops)}, bf16 {num(t.bf16_gflops)}, int8 {num(t.int8_gflops)} ({t.basis or ''})",
        ),
    ]
    if check := peak_check(results):
        lines.append(("peak, measured vs theoretical", "; ".join(check)))
    if bandwidth is not None:
        lines.append(
            (
                "memory bandwidth (measured)",
                f"{bandwidth.gbps:g} GB/s ({bandwidth.method}), measured {measured_at(bandwidth.machine_load)}",
            )
        )
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
            f"rounds{adaptive(results)}; unstable above CV {s.cv_threshold:.0%}{malloc(results)}"
        )
    inflight = f", {s.requests} requests in flight" if s.mode == "throughput" else ""
    return (
        f"{s.mode} mode{inflight}, {s.threads} threads, batches {', '.join(map(str, s.batches))}; "
        f"per cell and round: warm-up >= {s.warmup_seconds} s and >= {s.warmup_iters} runs (1 after the first "
        f"round), then timed runs until >= "
        f"{s.min_seconds} s and >= {s.min_iters} runs in all, split over {s.rounds} interleaved rounds"
        f"{adaptive(results)}; unstable above CV {s.cv_threshold:.0%}{malloc(results)}"
    )


def malloc(results: Results) -> str:
    """How the workers' malloc was set ("" for glibc's own behaviour)."""
    if results.settings.malloc == "system":
        return ""
    return (
        "; glibc's malloc thresholds pinned in every worker (mmap at 32 MiB, no trim below 1 GiB: "
        "memory is reused, not mapped afresh each run)"
    )


def adaptive(results: Results) -> str:
    """The adaptive rounds rule as the run applied it ("" for a run from before it)."""
    s = results.settings
    if s.max_rounds is None or s.ci_target is None:
        return ""
    budget = f", or {s.max_seconds:g} s of rounds per batch" if s.max_seconds is not None else ""
    steal = ""
    if s.max_round_steal is not None:
        dropped = sum(c.rounds_dropped or 0 for c in results.cells if isinstance(c, MeasuredCell))
        steal = f"; a round in which the hypervisor took over {s.max_round_steal:.0%} (steal) was timed again"
        steal += f" ({dropped} cell-rounds dropped)"
    lives = ""
    if s.processes > 1:
        lives = f"; each cell's rounds spread over {s.processes} fresh worker processes (one every "
        lives += f"{math.ceil(s.rounds / s.processes)} rounds)"
    return (
        f", then more rounds (up to {s.max_rounds}{budget}) for each cell whose speed-up interval was wider "
        f"than +-{s.ci_target:.1%}, with eager{steal}{lives}"
    )


# The kinds of flag a cell may carry, by how each one starts; any other is its text up to the colon.
FLAG_KINDS = ("unstable", "stalls", "wide interval", "wasted optimization", "execution precision")


def flag_kind(flag: str) -> str:
    """A flag's kind: ``wide interval``, ``wasted optimization``, ``fp32 ops`` (a profile's flag) ..."""
    for kind in FLAG_KINDS:
        if flag.startswith(kind):
            return kind
    if "left in fp32" in flag:
        return "fp32 ops"
    return flag.split(":", 1)[0]


def flag_groups(results: Results) -> dict[str, list[tuple[str, str]]]:
    """Every flag by kind, in first-seen order: (the cell, "key batch N", and the flag)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for c in results.cells:
        for flag in c.flags:
            groups.setdefault(flag_kind(flag), []).append((f"{c.key} batch {c.batch}", flag))
    return groups


def within_gate(results: Results, cell: MeasuredCell) -> bool:
    """The cell passed its build's parity gate (or had none) and its metric drop is within
    ``[gates] max_metric_drop`` where both are known."""
    if cell.parity_passed is False:
        return False
    limit, acc = results.gates.max_metric_drop, cell.accuracy
    return limit is None or acc is None or acc.drop <= limit


def winner_lines(results: Results) -> list[str]:
    """Per batch, the fastest artifact within the gate: its speed-up with the interval, its size
    and what it trades (precision, accuracy or parity against eager)."""
    lines = []
    for batch in results.settings.batches:
        cells = [
            c
            for c in results.batch(batch)
            if isinstance(c, MeasuredCell) and c.target != BASELINE and c.speedup_vs_eager and within_gate(results, c)
        ]
        if not cells:
            continue
        best = max(cells, key=lambda c: c.speedup_vs_eager or 0.0)
        trades = [f"runs {best.execution_precision or best.precision}"]
        if best.accuracy is not None:
            trades.append(f"{best.accuracy.metric} {-best.accuracy.drop:+.4f} vs eager")
        elif best.parity_worst:
            trades.append(f"parity {best.parity_worst}")
        lines.append(
            f"batch {batch}: {best.key}, {speedup(best)} vs eager, {size(best.size_bytes)}; trades: {', '.join(trades)}"
        )
    return lines
