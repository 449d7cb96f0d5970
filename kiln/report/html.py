"""``report.html``: one self-contained page (inline CSS and SVG, no script, nothing fetched)."""

from __future__ import annotations

from html import escape

from kiln.report import fmt, svg
from kiln.report.markdown import COLUMNS, _row
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
        ratios = [(c.key, c.speedup_vs_eager) for c in rows if c.speedup_vs_eager is not None]
        if ratios:
            plots.append(
                svg.range_bars(
                    "speedup",
                    f"Speed-up vs eager, batch {batch} (dashed line: eager)",
                    [(key, ratio, ratio, colors[key]) for key, ratio in ratios],
                    "×",
                    ref=1.0,
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


def _table(cells: list[MeasuredCell | FailedCell]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    rows = []
    for cell in cells:
        values = _row(cell)
        if isinstance(cell, FailedCell):
            cls = cell.status
            tds = f"<td>{escape(values[0])}</td><td>{escape(values[1])}</td><td colspan='{len(COLUMNS) - 2}' style='text-align:left'>{escape(values[2])}</td>"
        else:
            cls = "unstable" if cell.latency.unstable else ""
            tds = "".join(f"<td>{escape(v)}</td>" for v in values)
        rows.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def render_html(results: Results) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kiln benchmark: {escape(results.model)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>kiln benchmark: {escape(results.model)}</h1>",
        f"<p>Run {escape(results.created)} by kiln {escape(results.kiln_version)} from "
        f"<code>{escape(str(results.config))}</code>.<br>{escape(fmt.settings_line(results))}.</p>",
        '<h2>Plots</h2><div class="plots">',
        *_plots(results),
        "</div>",
    ]
    for batch in results.settings.batches:
        flops = results.flops.get(batch)
        extra = f" ({flops / 1e9:.3g} GFLOP per forward pass)" if flops else ""
        parts.append(f"<h2>Batch {batch}{escape(extra)}</h2>")
        parts.append(_table(results.batch(batch)))
    flagged = [(c, f) for c in results.cells for f in c.flags]
    parts.append('<h2>Flags</h2><ul class="flags">')
    parts += [f"<li><b>{escape(c.key)}</b> batch {c.batch}: {escape(f)}</li>" for c, f in flagged] or ["<li>None.</li>"]
    parts.append("</ul><h2>Machine</h2><dl>")
    parts += [f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in fmt.fingerprint_lines(results)]
    parts.append("</dl></body></html>")
    return "\n".join(parts)
