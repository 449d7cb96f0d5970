"""``report.html``: one self-contained page (inline CSS and SVG, no script, nothing fetched)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from kiln.report import fmt, generation, profile, svg, variants
from kiln.report.markdown import BUSY_CPUS, COLUMNS, _row
from kiln.results import FailedCell, MeasuredCell, Results

CSS = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1500px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 20px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.unstable td { background: #fff4d6; } tr.error td, tr.skipped td { color: #777; }
.flags li { margin: 2px 0; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
div.wide { overflow-x: auto; } td:nth-last-child(-n+2) { white-space: normal; min-width: 150px; }
.plot { border: 1px solid #eee; background: #fff; } dt { font-weight: bold; } dd { margin: 0 0 6px 16px; }
"""


def _colors(cells: list[MeasuredCell | FailedCell]) -> dict[str, str]:
    keys = list(dict.fromkeys(c.key for c in cells))
    return {k: svg.color(i) for i, k in enumerate(keys)}


def _plots(results: Results) -> list[str]:
    cells = [c for c in results.cells if isinstance(c, MeasuredCell)]
    if not cells:
        return ["<p>No cell ran, so there is nothing to plot.</p>"]
    colors = _colors(results.cells)
    plots = []
    for batch in results.settings.batches:
        rows = [c for c in cells if c.batch == batch]
        if not rows:
            continue
        plots.append(
            svg.range_bars(
                "latency",
                f"Latency per target, batch {batch} (bar p50, whisker to p90)",
                [(c.key, c.latency.p50_ms, c.latency.p90_ms, colors[c.key]) for c in rows],
                "ms",
            )
        )
        ratios = [c for c in rows if c.speedup_vs_eager is not None]
        if ratios:
            plots.append(
                svg.range_bars(
                    "speedup",
                    f"Speed-up vs eager, batch {batch} (whisker: 95% interval over rounds; dashed line: eager)",
                    [
                        (
                            c.key,
                            c.speedup_vs_eager or 0.0,
                            c.speedup_ci_high or c.speedup_vs_eager or 0.0,
                            colors[c.key],
                        )
                        for c in ratios
                    ],
                    "×",
                    ref=1.0,
                    lows=[c.speedup_ci_low for c in ratios],
                )
            )
    first = results.settings.batches[0]
    acc = [(c, c.accuracy) for c in cells if c.batch == first and c.accuracy is not None]
    if acc:
        plots.append(
            svg.scatter(
                "accuracy",
                f"Latency vs accuracy, batch {first}",
                [(c.key, c.latency.p50_ms, a.value, colors[c.key]) for c, a in acc],
                "p50 ms",
                acc[0][1].metric,
            )
        )
    else:
        plots.append('<p data-plot="accuracy">No evaluation set in the config, so no latency-vs-accuracy plot.</p>')
    series: dict[str, list[tuple[int, float]]] = {}
    for c in cells:
        series.setdefault(c.key, []).append((c.batch, c.latency.throughput))
    plots.append(
        svg.lines_chart(
            "sweep",
            "Batch sweep: throughput (items/s) per target",
            [(k, pts, colors[k]) for k, pts in series.items()],
            "items/s",
        )
    )
    return plots


def _generation_plots(results: Results) -> list[str]:
    """Decode tokens/s per target and precision, TTFT per prompt length, inter-token latency,
    and tokens/s against perplexity where the builds measured it."""
    cells = [c for c in results.cells if isinstance(c, MeasuredCell) and c.generation]
    if not cells:
        return ["<p>No cell ran, so there is nothing to plot.</p>"]
    colors = _colors(results.cells)
    plots = [
        svg.range_bars(
            "tokens",
            "Decode tokens/s per target and precision (dashed line: eager)",
            [(c.key, g.tokens_per_s, g.tokens_per_s, colors[c.key]) for c in cells if (g := c.generation)],
            "tok/s",
            ref=next((g.tokens_per_s for c in cells if c.key == "eager-fp32" and (g := c.generation)), None),
        ),
        svg.range_bars(
            "ttft",
            "Time to first token per prompt length (bar p50, whisker to p90)",
            [
                (f"{c.key} @{p.prompt_tokens}", p.ttft.p50_ms, p.ttft.p90_ms, colors[c.key])
                for length in generation.prompt_lengths(results)
                for c in cells
                if c.generation
                for p in c.generation.prompts
                if p.prompt_tokens == length
            ],
            "ms",
        ),
        svg.range_bars(
            "itl",
            "Inter-token latency (bar p50, whisker to p99)",
            [(c.key, c.latency.p50_ms, c.latency.p99_ms, colors[c.key]) for c in cells],
            "ms",
        ),
    ]
    roofline = [(c.key, g.roofline.fraction) for c in cells if (g := c.generation) and g.roofline]
    if roofline:
        plots.append(
            svg.range_bars(
                "roofline",
                "Decode tokens/s as a fraction of the memory-bandwidth roofline",
                [(key, 100 * f, 100 * f, colors[key]) for key, f in roofline],
                "% of roofline",
            )
        )
    ppl = [(c, g) for c in cells if (g := c.generation) and g.perplexity_increase is not None]
    if ppl and max(abs(g.perplexity_increase or 0.0) for _, g in ppl) < 1e-4:
        plots.append("<p data-plot=\"perplexity\">Every artifact's perplexity is within 0.01 % of eager's.</p>")
    elif ppl:
        plots.append(
            svg.scatter(
                "perplexity",
                "Decode tokens/s vs held-out perplexity increase over eager",
                [(c.key, g.tokens_per_s, 100 * (g.perplexity_increase or 0.0), colors[c.key]) for c, g in ppl],
                "tok/s",
                "perplexity increase %",
            )
        )
    return plots


def _grid(columns: Sequence[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for i, values in enumerate(rows):
        cls = classes[i] if classes else ""
        if cls in ("error", "skipped"):
            tds = (
                f"<td>{escape(values[0])}</td><td>{escape(values[1])}</td>"
                f"<td colspan='{len(columns) - 2}' style='text-align:left'>{escape(values[2])}</td>"
            )
        else:
            tds = "".join(f"<td>{escape(v)}</td>" for v in values)
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _class(cell: MeasuredCell | FailedCell) -> str:
    if isinstance(cell, FailedCell):
        return cell.status
    return "unstable" if cell.latency.unstable else ""


def _table(cells: list[MeasuredCell | FailedCell]) -> str:
    return _grid(COLUMNS, [_row(c) for c in cells], [_class(c) for c in cells])


def _generation_tables(results: Results) -> list[str]:
    s = results.settings
    parts = [f"<h2>Generation ({s.new_tokens} new tokens, greedy, batch 1)</h2>"]
    rows = [generation.row(results, c, " unstable") for c in results.cells]
    parts.append(_grid(generation.columns(results), rows, [_class(c) for c in results.cells]))
    if notes := generation.notes(results):
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<h3>Roofline</h3><p>Memory bandwidth: {escape(generation.bandwidth_line(results))}.</p>")
    if roofline := generation.roofline_rows(results):
        parts.append(_grid(generation.ROOFLINE_COLUMNS, roofline))
        if line := generation.in_cache_line(results):
            parts.append(f"<p>{escape(line)}</p>")
    parts.append("<h3>Per prompt length</h3>")
    parts.append(_grid(generation.PROMPT_COLUMNS, generation.prompt_rows(results)))
    parts.append(f"<p>{escape(generation.LEGEND)}</p>")
    return parts


def render_html(results: Results) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kiln benchmark: {escape(results.model)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>kiln benchmark: {escape(results.model)}</h1>",
        f"<p>Run {escape(results.created)} by kiln {escape(results.kiln_version)} from "
        f"<code>{escape(str(results.config))}</code>.<br>{escape(fmt.settings_line(results))}.</p>",
        *(
            ["<p><b>Fastest within the gate</b>:</p><ul>", *[f"<li>{escape(x)}</li>" for x in winners], "</ul>"]
            if (winners := [] if results.generative else fmt.winner_lines(results))
            else []
        ),
        '<h2>Plots</h2><div class="plots">',
        *(_generation_plots(results) if results.generative else _plots(results)),
        "</div>",
    ]
    if results.generative:
        parts += _generation_tables(results)
    for batch in [] if results.generative else results.settings.batches:
        flops = results.flops.get(batch)
        extra = f" ({flops / 1e9:.3g} GFLOP per forward pass)" if flops else ""
        parts.append(f"<h2>Batch {batch}{escape(extra)}</h2>")
        parts.append(_table(results.batch(batch)))
    if variants.has_members(results):
        parts.append("<h2>The ensemble against its members</h2>")
        for batch in results.settings.batches:
            if lines := variants.rows(results, batch):
                parts += [f"<p>Batch {batch}:</p>", _grid(variants.COLUMNS, lines)]
        parts.append(f"<p>{escape(variants.LEGEND)}</p>")
    if not results.generative and (qat := variants.qat_rows(results, results.settings.batches[0])):
        parts.append("<h2>Quantization-aware training against post-training quantization</h2>")
        parts += [_grid(variants.QAT_COLUMNS, qat), f"<p>{escape(variants.QAT_LEGEND)}</p>"]
    if line := variants.distillation_line(results):
        parts.append(f"<h2>Distillation</h2><p>{escape(line)}</p>")
    if cells := profile.profiled(results):
        parts.append("<h2>Where the time goes (--profile)</h2>")
        if chart := profile.plot(results):
            parts.append(f'<div class="plots">{chart}</div>')
        for cell in cells:
            assert cell.profile is not None
            parts.append(f"<h3>{escape(profile.label(cell))}</h3>")
            if cell.profile.rows:
                parts.append(_grid(profile.COLUMNS, profile.rows(cell.profile)))
            parts.append(f"<p>{escape(profile.caption(cell.profile))}</p>")
        parts.append(f"<p>{escape(profile.LEGEND)}</p>")
    flagged = [(c, f) for c in results.cells for f in c.flags]
    parts.append('<h2>Flags</h2><ul class="flags">')
    parts += [f"<li><b>{escape(c.key)}</b> batch {c.batch}: {escape(f)}</li>" for c, f in flagged] or ["<li>None.</li>"]
    parts.append("</ul><h2>Machine</h2><dl>")
    parts += [f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in fmt.fingerprint_lines(results)]
    if results.machine_load and (results.machine_load.other_cpus or 0) > BUSY_CPUS:
        parts.append(
            f"<dt>busy machine</dt><dd>other processes kept {results.machine_load.other_cpus:.2f} CPUs busy while "
            "the cells were timed: speed-ups and their intervals hold for that load; absolute figures are slower "
            "than on a quiet machine.</dd>"
        )
    parts += [f"<dt>machine figures</dt><dd>⚠ {escape(line)}</dd>" for line in fmt.figure_warnings(results)]
    parts.append("</dl></body></html>")
    return "\n".join(parts)
