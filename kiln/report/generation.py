"""The tables of a causal LM's run, shared by report.md, report.html and the console: one row per
cell with TTFT per prompt length, inter-token latency, decode tokens/s and the roofline fraction;
then the roofline's terms and the per-prompt figures."""

from __future__ import annotations

from kiln.report import fmt
from kiln.results import FailedCell, MeasuredCell, PromptFigures, Results

Cell = MeasuredCell | FailedCell


def fraction(v: float | None) -> str:
    """A roofline fraction: small ones (eager's, often) keep two significant digits."""
    if v is None:
        return "-"
    return f"{v * 100:.2g}%" if 0 < v < 0.01 else fmt.pct(v)


def prompt_lengths(results: Results) -> list[int]:
    """The prompt lengths some cell measured, in the settings' order."""
    seen = {
        p.prompt_tokens
        for c in results.cells
        if isinstance(c, MeasuredCell) and c.generation
        for p in c.generation.prompts
    }
    return [n for n in results.settings.prompt_tokens or [] if n in seen]


def columns(results: Results) -> list[str]:
    ttft = [f"TTFT@{n} ms" for n in prompt_lengths(results)]
    return [
        "target",
        "runs as",
        *ttft,
        "ITL p50 ms",
        "ITL p90 ms",
        "ITL p99 ms",
        "CV",
        "tok/s",
        "vs eager",
        "of roofline",
        "size",
        "peak RSS",
        "load s",
        "gate",
    ]


def _prompt(cell: MeasuredCell, length: int) -> PromptFigures | None:
    assert cell.generation is not None
    return next((p for p in cell.generation.prompts if p.prompt_tokens == length), None)


def row(results: Results, cell: Cell, unstable_mark: str = " ⚠ unstable") -> list[str]:
    width = len(columns(results))
    if isinstance(cell, FailedCell) or cell.generation is None:
        reason = f"{cell.status}: {cell.reason}" if isinstance(cell, FailedCell) else "no generation figures"
        return [cell.key, cell.execution_precision or "-", reason] + [""] * (width - 3)
    gen, lat = cell.generation, cell.latency
    ttft = []
    for length in prompt_lengths(results):
        figures = _prompt(cell, length)
        ttft.append(fmt.ms(figures.ttft.p50_ms) if figures else "-")
    return [
        cell.key + (" ⚑" if any(not f.startswith("unstable") for f in cell.flags) else ""),
        cell.execution_precision or "-",
        *ttft,
        fmt.ms(lat.p50_ms),
        fmt.ms(lat.p90_ms),
        fmt.ms(lat.p99_ms),
        fmt.pct(lat.cv) + (unstable_mark if lat.unstable else ""),
        fmt.num(gen.tokens_per_s),
        fmt.ratio(cell.speedup_vs_eager),
        fraction(gen.roofline.fraction if gen.roofline else None),
        fmt.size(cell.size_bytes),
        fmt.size(cell.peak_rss_bytes),
        f"{cell.load_s:.2f}",
        gen.gate or fmt.parity(cell),
    ]


ROOFLINE_COLUMNS = (
    "target",
    "weights read",
    "KV read",
    "mean context",
    "bytes/token",
    "roofline tok/s",
    "tok/s",
    "of roofline",
)


def roofline_rows(results: Results) -> list[list[str]]:
    rows = []
    for cell in results.cells:
        if not isinstance(cell, MeasuredCell) or cell.generation is None or cell.generation.roofline is None:
            continue
        r = cell.generation.roofline
        rows.append(
            [
                cell.key,
                fmt.size(r.weight_bytes),
                fmt.size(r.kv_bytes),
                f"{r.mean_context:.1f}",
                fmt.size(r.bytes_per_token),
                fmt.num(r.tokens_per_s),
                fmt.num(cell.generation.tokens_per_s),
                fraction(r.fraction),
            ]
        )
    return rows


PROMPT_COLUMNS = (
    "target",
    "prompt",
    "TTFT p50 ms",
    "TTFT p90 ms",
    "TTFT p99 ms",
    "prefill tok/s",
    "ITL p50 ms",
    "tok/s",
)


def prompt_rows(results: Results) -> list[list[str]]:
    rows = []
    for cell in results.cells:
        if not isinstance(cell, MeasuredCell) or cell.generation is None:
            continue
        for p in cell.generation.prompts:
            rows.append(
                [
                    cell.key,
                    str(p.prompt_tokens),
                    fmt.ms(p.ttft.p50_ms),
                    fmt.ms(p.ttft.p90_ms),
                    fmt.ms(p.ttft.p99_ms),
                    fmt.num(p.prefill_tokens_per_s),
                    fmt.ms(p.itl_p50_ms),
                    fmt.num(p.tokens_per_s),
                ]
            )
    return rows


def notes(results: Results) -> list[str]:
    """Prompt lengths left out: once when every cell left them out, else per cell."""
    cells = [c for c in results.cells if isinstance(c, MeasuredCell) and c.generation]
    by_note: dict[str, list[str]] = {}
    for cell in cells:
        assert cell.generation is not None
        for note in cell.generation.notes:
            by_note.setdefault(note, []).append(cell.key)
    return [note if len(keys) == len(cells) else f"{', '.join(keys)}: {note}" for note, keys in by_note.items()]


def bandwidth_line(results: Results) -> str:
    bw = results.bandwidth
    return f"{bw.gbps:g} GB/s ({bw.method})" if bw else "not measured"


def in_cache_line(results: Results) -> str | None:
    """Which cells read less per token than the last-level cache holds: for them DRAM bandwidth
    is not the bound."""
    keys = [
        c.key
        for c in results.cells
        if isinstance(c, MeasuredCell) and c.generation and c.generation.roofline and c.generation.roofline.in_cache
    ]
    if not keys or results.bandwidth is None or not results.bandwidth.last_level_cache_bytes:
        return None
    llc = results.bandwidth.last_level_cache_bytes / 2**20
    which = "every cell" if len(keys) == len(roofline_rows(results)) else ", ".join(keys)
    return (
        f"The bytes read per token of {which} fit in the {llc:.0f} MiB last-level cache: memory bandwidth is "
        "not the bound there, and the fraction can pass 100 %."
    )


LEGEND = (
    "Every target decodes through the same loop (kiln.decoding: session_for + generate, greedy, end of "
    "sequence ignored) from seeded prompts of each length. TTFT@n: time to first token after an n-token "
    "prompt (reset, prefill, first token), p50 in ms. ITL: inter-token latency over every decode step, in ms; "
    "CV over those steps. tok/s: decode steps per second. vs eager: eager's ITL p50 / this ITL p50. of "
    "roofline: tok/s over bandwidth / (weights read + KV cache at the mean context) per token, the memory "
    "bound of decoding one sequence. gate: the build's generation gate (greedy tokens, perplexity, cosine)."
)
