"""``report.md``: per-batch tables, flags and the fingerprint, from ``results.json``."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.report import fmt, generation, profile, variants
from kiln.results import BUSY_OTHER_CPUS, FailedCell, MeasuredCell, Results

BUSY_CPUS = BUSY_OTHER_CPUS  # other processes' mean busy CPUs above which a report says the machine was busy

COLUMNS = (
    "target",
    "runs as",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "CV",
    "stalls",
    "faults/run",
    "items/s",
    "vs eager [95% CI]",
    "rounds",
    "GFLOP/s",
    "of peak",
    "size",
    "peak RSS",
    "load s",
    "1st ms",
    "parity",
    "accuracy",
)


# Flags about the measurement rather than the artifact: the ⚑ marks only the others.
TIMING_FLAGS = ("unstable", "stalls", "wide interval")


def _row(cell: MeasuredCell | FailedCell) -> list[str]:
    if isinstance(cell, FailedCell):
        return [cell.key, cell.execution_precision or "-", f"{cell.status}: {cell.reason}"] + [""] * (len(COLUMNS) - 3)
    lat = cell.latency
    cv = fmt.pct(lat.cv) + (" ⚠ unstable" if lat.unstable else "")
    return [
        cell.key + (" ⚑" if any(not f.startswith(TIMING_FLAGS) for f in cell.flags) else ""),
        cell.execution_precision or "-",
        fmt.ms(lat.p50_ms),
        fmt.ms(lat.p90_ms),
        fmt.ms(lat.p99_ms),
        cv,
        fmt.stalls(cell),
        fmt.num(cell.page_faults_per_run),
        fmt.num(lat.throughput),
        fmt.speedup(cell),
        str(cell.rounds) if cell.rounds else "-",
        fmt.num(cell.gflops),
        fmt.pct(cell.roofline_fraction),
        fmt.size(cell.size_bytes),
        fmt.size(cell.peak_rss_bytes),
        f"{cell.load_s:.2f}",
        fmt.ms(cell.first_inference_ms),
        fmt.parity(cell),
        fmt.accuracy(cell),
    ]


def _grid(columns: Sequence[str], rows: list[list[str]], left: int = 2) -> list[str]:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|",
    ]
    for values in rows:
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return lines


def _table(cells: list[MeasuredCell | FailedCell]) -> list[str]:
    return _grid(COLUMNS, [_row(cell) for cell in cells])


def _generation(results: Results) -> list[str]:
    """A causal LM's sections: the cells, the roofline's terms, the per-prompt figures."""
    s = results.settings
    out = [f"## Generation ({s.new_tokens} new tokens, greedy, batch 1)", ""]
    out += _grid(generation.columns(results), [generation.row(results, c) for c in results.cells])
    if notes := generation.notes(results):
        out += ["", *[f"- {n}" for n in notes]]
    out += ["", "### Roofline", "", f"Memory bandwidth: {generation.bandwidth_line(results)}.", ""]
    if rows := generation.roofline_rows(results):
        out += _grid(generation.ROOFLINE_COLUMNS, rows, left=1)
        if line := generation.in_cache_line(results):
            out += ["", line]
    else:
        out.append("No roofline: the bandwidth or the artifacts' weights are unknown.")
    out += ["", "### Per prompt length", ""]
    out += _grid(generation.PROMPT_COLUMNS, generation.prompt_rows(results))
    return [*out, ""]


def _profiles(results: Results) -> list[str]:
    """``--profile``: one table per profiled artifact, its caption under it."""
    cells = profile.profiled(results)
    if not cells:
        return []
    out = ["## Where the time goes (--profile)", ""]
    for cell in cells:
        assert cell.profile is not None
        out += [f"### {profile.label(cell)}", ""]
        if cell.profile.rows:
            out += [*_grid(profile.COLUMNS, profile.rows(cell.profile), left=3), ""]
        out += [profile.caption(cell.profile), ""]
    return [*out, profile.LEGEND, ""]


def render_markdown(results: Results) -> str:
    settings = results.settings
    out = [
        f"# kiln benchmark: {results.model}",
        "",
        f"Run {results.created} by kiln {results.kiln_version} from `{results.config}`.  ",
        f"Settings: {fmt.settings_line(results)}.",
        "",
    ]
    if not results.generative and (winners := fmt.winner_lines(results)):
        out += ["**Fastest within the gate**:", "", *[f"- {line}" for line in winners], ""]
    if results.generative:
        out += _generation(results)
    else:
        for batch in settings.batches:
            flops = results.flops.get(batch)
            extra = f" ({flops / 1e9:.3g} GFLOP per forward pass)" if flops else ""
            out += [f"## Batch {batch}{extra}", ""]
            out += _table(results.batch(batch))
            out.append("")
    if variants.has_members(results):
        out += ["## The ensemble against its members", ""]
        for batch in settings.batches:
            if lines := variants.rows(results, batch):
                out += [f"Batch {batch}:", "", *_grid(variants.COLUMNS, lines), ""]
        out += [variants.LEGEND, ""]
    if any(variants.qat_rows(results, b) for b in settings.batches[:1]):
        out += ["## Quantization-aware training against post-training quantization", ""]
        out += [*_grid(variants.QAT_COLUMNS, variants.qat_rows(results, settings.batches[0]), left=1), ""]
        out += [variants.QAT_LEGEND, ""]
    if line := variants.distillation_line(results):
        out += ["## Distillation", "", line, ""]
    out += _profiles(results)
    flagged = [(c, f) for c in results.cells for f in c.flags]
    out += ["## Flags", ""]
    out += [f"- **{c.key}** batch {c.batch}: {f}" for c, f in flagged] or [
        "None: every cell is stable, runs at "
        "the requested precision, and no "
        "compressed artifact is slower than "
        "its fp32 sibling."
    ]
    out += ["", "## Machine", ""]
    out += [f"- **{k}**: {v}" for k, v in fmt.fingerprint_lines(results)]
    if results.machine_load and (results.machine_load.other_cpus or 0) > BUSY_CPUS:
        out += [
            "",
            f"⚠ The machine was busy: other processes kept {results.machine_load.other_cpus:.2f} CPUs busy while "
            "the cells were timed. Speed-ups and their intervals hold for that load; absolute figures are slower than "
            "on a quiet machine.",
        ]
    for line in fmt.figure_warnings(results):
        out += ["", f"⚠ {line}"]
    if results.generative:
        return "\n".join([*out, "", generation.LEGEND + " ⚑: see Flags.", ""])
    out += [
        "",
        (
            "p50/p90/p99: latency percentiles of one request (one batch) in ms. "
            if settings.mode == "latency"
            else f"p50/p90/p99: percentiles in ms of one timed sample, {settings.requests} requests kept in "
            "flight by the runtime's own concurrency. "
        )
        + "CV: standard deviation / mean of the timed runs. stalls: the share (count) of runs over "
        "5× the median, counted and kept. faults/run: minor page faults per timed run (fresh pages the run took from "
        "the kernel; an allocator that maps large blocks anew pays one per 4 KiB, every run). vs eager: the median over rounds of each round's ratio (eager's p50 / this p50 "
        "in latency mode, this throughput / eager's in throughput mode; each round times eager and this cell moments "
        "apart), at the same batch in the same run; [low–high]: its distribution-free confidence interval (order "
        "statistics of the per-round ratios, 95 % from 6 rounds), rounds: how many. GFLOP/s: the model's FLOPs "
        "(counted on the captured program) per second at the measured throughput; of peak: that over the measured "
        "GEMM peak of the precision the cell executes (runs as). peak RSS: the worker process's peak resident memory. ⚑: see Flags.",
        "",
    ]
    return "\n".join(out)
