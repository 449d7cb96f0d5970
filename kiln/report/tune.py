"""``tune.html``: the Pareto front of a ``kiln tune`` search as inline-SVG plots and a table.

Drawn from plain figures (:class:`TunePage`), not from the search's records, so reports stay
below the search in the layering and import no toolchain. Only the front and the winner are
labelled on the plots; every point names itself in its tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from kiln.report import svg
from kiln.report.html import CSS

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 370, 80, 30, 48, 310
STYLE = {"winner": (svg.color(3), 8), "front": (svg.color(0), 6), "dominated": ("#bbbbbb", 4)}


@dataclass(frozen=True)
class TunePoint:
    label: str
    speed: float  # p50 ms (lower is better) or items/s (higher is better)
    drop: float | None  # metric drop; None without an evaluation set
    size: int | None  # bytes
    kind: str  # winner | front | dominated


@dataclass(frozen=True)
class TunePage:
    title: str
    lines: list[str]  # what was searched, on which machine, how long
    speed_unit: str  # "p50 ms" or "items/s"
    points: list[TunePoint]
    columns: list[str]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (heading, bullet lines)


class _Scale:
    """Value -> pixel on one axis: linear, or log10 when the values span more than 20x."""

    def __init__(self, values: Sequence[float], lo_px: float, hi_px: float) -> None:
        vals = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        self.log = lo > 0 and hi / lo > 20
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-6)
        self.lo, self.hi, self.lo_px, self.hi_px = lo - pad, hi + pad, lo_px, hi_px

    def __call__(self, v: float) -> float:
        x = math.log10(v) if self.log else v
        return self.lo_px + (self.hi_px - self.lo_px) * (x - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        return [
            10 ** (self.lo + (self.hi - self.lo) * i / 4) if self.log else self.lo + (self.hi - self.lo) * i / 4
            for i in range(5)
        ]


def pareto_svg(kind: str, title: str, points: Sequence[tuple[TunePoint, float]], xunit: str, yunit: str) -> str:
    """Speed (x) against one cost (y, lower is better): every candidate, the front joined by a line."""
    x = _Scale([p.speed for p, _ in points], LEFT, W - RIGHT)
    y = _Scale([v for _, v in points], BOTTOM, TOP)
    out = [
        f'<svg class="plot" data-plot="{kind}" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
    ]
    for v in x.ticks():
        px = x(v)
        out.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{BOTTOM}" stroke="#eee"/>')
        out.append(f'<text x="{px:.1f}" y="{BOTTOM + 14}" text-anchor="middle">{v:.3g}</text>')
    for v in y.ticks():
        py = y(v)
        out.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    scale = " (log scale)" if x.log else ""
    out.append(f'<text x="{W - RIGHT}" y="{BOTTOM + 32}" text-anchor="end" fill="#555">{escape(xunit + scale)}</text>')
    mid = (TOP + BOTTOM) / 2
    out.append(f'<text x="14" y="{mid}" transform="rotate(-90 14 {mid})" text-anchor="middle">{escape(yunit)}</text>')
    front = sorted(((x(p.speed), y(v)) for p, v in points if p.kind != "dominated"), key=lambda c: c[0])
    if len(front) > 1:
        coords = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in front)
        out.append(
            f'<polyline class="front" fill="none" stroke="{svg.color(0)}" stroke-dasharray="4 3" points="{coords}"/>'
        )
    order = sorted(points, key=lambda pv: ("dominated", "front", "winner").index(pv[0].kind))
    for k, (p, v) in enumerate(order):
        fill, r = STYLE.get(p.kind, STYLE["dominated"])
        px, py = x(p.speed), y(v)
        tip = f"{p.label}: {p.speed:.4g} {xunit}, {v:.4g} {yunit} ({p.kind})"
        out.append(
            f'<circle class="point {p.kind}" cx="{px:.1f}" cy="{py:.1f}" r="{r}" fill="{fill}">'
            f"<title>{escape(tip)}</title></circle>"
        )
        if p.kind != "dominated":
            dy = -9 - 12 * (k % 3)
            weight = ' font-weight="bold"' if p.kind == "winner" else ""
            out.append(f'<text x="{px + 8:.1f}" y="{py + dy:.1f}" font-size="11"{weight}>{escape(p.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def plots(page: TunePage) -> list[str]:
    if not page.points:
        return ['<p data-plot="pareto">No candidate was measured, so there is no front to plot.</p>']
    drops = [(p, p.drop) for p in page.points if p.drop is not None]
    sizes = [(p, p.size / 2**20) for p in page.points if p.size is not None]
    out = []
    if drops:
        out.append(
            pareto_svg("pareto-metric", "Speed vs metric drop (front dashed)", drops, page.speed_unit, "metric drop")
        )
    else:
        out.append('<p data-plot="pareto-metric">No [evaluation] in the config: no metric drop to plot.</p>')
    if sizes:
        out.append(pareto_svg("pareto-size", "Speed vs artifact size (front dashed)", sizes, page.speed_unit, "MiB"))
    return out


def _table(page: TunePage) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in page.columns)
    classes = page.row_classes or [""] * len(page.rows)
    body = "".join(
        f'<tr class="{cls}">' + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>"
        for row, cls in zip(page.rows, classes, strict=True)
    )
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def render_tune_html(page: TunePage) -> str:
    css = CSS + "tr.winner td { background: #fde2e2; font-weight: bold; } tr.front td { background: #e6eef7; }\n"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(page.title)}</title>",
        f"<style>{css}</style></head><body>",
        f"<h1>{escape(page.title)}</h1>",
        "<p>" + "<br>".join(escape(line) for line in page.lines) + "</p>",
        '<h2>Pareto front</h2><div class="plots">',
        *plots(page),
        "</div><h2>Candidates</h2>",
        _table(page),
    ]
    for heading, lines in page.sections:
        parts.append(f"<h2>{escape(heading)}</h2><ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
