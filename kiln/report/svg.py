"""Small inline-SVG charts: no JavaScript, no fonts or files fetched, readable offline."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
W, ROW, LEFT, RIGHT = 720, 26, 170, 60


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _open(kind: str, title: str, height: float) -> list[str]:
    return [
        f'<svg class="plot" data-plot="{kind}" role="img" viewBox="0 0 {W} {height:.0f}" width="{W}" '
        f'height="{height:.0f}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
    ]


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= v)


class _Axis:
    """Value -> x: linear from 0, or log10 when the values span more than 20x (latencies of
    different runtimes often span orders of magnitude, and a linear axis hides the fast ones)."""

    def __init__(self, values: list[float]) -> None:
        positive = [v for v in values if v > 0] or [1.0]
        lo, hi = min(positive), max(positive)
        self.log = hi / lo > 20
        if self.log:
            self.lo, self.hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            if self.hi == self.lo:
                self.hi += 1
        else:
            self.lo, self.hi = 0.0, _nice_max(hi)

    def x(self, v: float) -> float:
        if not self.log:
            return LEFT + (W - LEFT - RIGHT) * v / self.hi
        return LEFT + (W - LEFT - RIGHT) * (math.log10(max(v, 10.0**self.lo)) - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0**e for e in range(int(self.lo), int(self.hi) + 1)]
        return [self.hi * i / 4 for i in range(5)]

    def draw(self, lines: list[str], top: float, bottom: float, unit: str) -> None:
        for v in self.ticks():
            x = self.x(v)
            lines.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
            lines.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{v:.3g}</text>')
        scale = "log scale" if self.log else ""
        lines.append(
            f'<text x="{W - RIGHT}" y="{bottom + 30}" text-anchor="end" fill="#555">{escape(unit)} {scale}</text>'
        )


def range_bars(
    kind: str,
    title: str,
    rows: list[tuple[str, float, float, str]],
    unit: str,
    ref: float | None = None,
    lows: list[float | None] | None = None,
) -> str:
    """Horizontal bars to ``value`` with a whisker to ``high`` (p50 with the p50-p90 range), or,
    where ``lows`` gives a row's low end, a whisker from low to high (a confidence interval)."""
    height = 30 + ROW * len(rows) + 40
    lines = _open(kind, title, height)
    axis = _Axis([v for _, v, _, _ in rows] + [hi for _, _, hi, _ in rows] + ([ref] if ref else []))
    top, bottom = 26, 26 + ROW * len(rows)
    axis.draw(lines, top, bottom, unit)
    for i, (name, value, high, fill) in enumerate(rows):
        y = top + i * ROW
        low = lows[i] if lows else None
        x0, x1 = axis.x(value), axis.x(high)
        xs = axis.x(low) if low is not None else x0
        span = f" [{low:.4g}-{high:.4g}]" if low is not None else ""
        lines.append(f'<text x="{LEFT - 6}" y="{y + 17}" text-anchor="end">{escape(name)}</text>')
        lines.append(
            f'<rect class="bar" x="{LEFT}" y="{y + 5}" width="{max(x0 - LEFT, 1):.1f}" height="{ROW - 10}" '
            f'fill="{fill}"><title>{escape(name)}: {value:.4g} {escape(unit)}{span}</title></rect>'
        )
        if high > value or (low is not None and low < value):
            cls = ' class="interval"' if low is not None else ""
            lines.append(f'<line{cls} x1="{xs:.1f}" y1="{y + 13}" x2="{x1:.1f}" y2="{y + 13}" stroke="#333"/>')
            for edge in (xs, x1) if low is not None else (x1,):
                lines.append(f'<line x1="{edge:.1f}" y1="{y + 8}" x2="{edge:.1f}" y2="{y + 18}" stroke="#333"/>')
        lines.append(f'<text x="{max(x0, x1) + 4:.1f}" y="{y + 17}" font-size="11">{value:.3g}</text>')
    if ref is not None:
        x = axis.x(ref)
        lines.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#c00" stroke-dasharray="4 3"/>')
    lines.append("</svg>")
    return "\n".join(lines)


def scatter(kind: str, title: str, points: list[tuple[str, float, float, str]], xunit: str, yunit: str) -> str:
    """Labelled points (name, x, y, colour)."""
    height, top, bottom = 330, 30, 280
    lines = _open(kind, title, height)
    axis = _Axis([p[1] for p in points])
    ys = [p[2] for p in points]
    ylo, yhi = min(ys), max(ys)
    pad = max((yhi - ylo) * 0.15, abs(yhi) * 0.002, 1e-6)
    ylo, yhi = ylo - pad, yhi + pad
    axis.draw(lines, top, bottom, xunit)
    for i in range(5):
        v = ylo + (yhi - ylo) * i / 4
        y = bottom - (bottom - top) * i / 4
        lines.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        lines.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.4g}</text>')
    lines.append(
        f'<text x="12" y="{(top + bottom) / 2}" transform="rotate(-90 12 {(top + bottom) / 2})" text-anchor="middle">{escape(yunit)}</text>'
    )
    for k, (name, x, yv, fill) in enumerate(points):
        px = axis.x(x)
        py = bottom - (bottom - top) * (yv - ylo) / (yhi - ylo)
        lines.append(
            f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{fill}"><title>{escape(name)}: '
            f"{x:.4g} {escape(xunit)}, {yv:.4g}</title></circle>"
        )
        dy = -8 - 12 * (k % 3)  # staggered: points at one accuracy often sit side by side
        lines.append(f'<text x="{px + 8:.1f}" y="{py + dy:.1f}" font-size="11">{escape(name)}</text>')
    lines.append("</svg>")
    return "\n".join(lines)


def lines_chart(kind: str, title: str, series: list[tuple[str, list[tuple[int, float]], str]], yunit: str) -> str:
    """One line per series over categorical x values (batch sizes), log-spaced by position."""
    height, top, bottom = 320, 30, 260
    out = _open(kind, title, height)
    xs = sorted({x for _, pts, _ in series for x, _ in pts})
    ymax = _nice_max(max(y for _, pts, _ in series for _, y in pts))
    right = W - 150
    step = (right - LEFT) / max(len(xs) - 1, 1)
    for i in range(5):
        v = ymax * i / 4
        y = bottom - (bottom - top) * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    out.append(
        f'<text x="12" y="{(top + bottom) / 2}" transform="rotate(-90 12 {(top + bottom) / 2})" text-anchor="middle">{escape(yunit)}</text>'
    )
    for i, x in enumerate(xs):
        out.append(f'<text x="{LEFT + i * step:.1f}" y="{bottom + 16}" text-anchor="middle">batch {x}</text>')
    for k, (name, pts, fill) in enumerate(series):
        coords = [(LEFT + xs.index(x) * step, bottom - (bottom - top) * y / ymax) for x, y in sorted(pts)]
        out.append(
            f'<polyline class="series" fill="none" stroke="{fill}" stroke-width="2" '
            f'points="{" ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)}"/>'
        )
        for (cx, cy), (x, y) in zip(coords, sorted(pts), strict=True):
            out.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{fill}"><title>{escape(name)} batch {x}: {y:.4g}</title></circle>'
            )
        out.append(f'<rect x="{right + 16}" y="{top + k * 18}" width="12" height="12" fill="{fill}"/>')
        out.append(f'<text x="{right + 32}" y="{top + k * 18 + 10}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(kind: str, title: str, bars: list[tuple[str, list[tuple[str, float, str]]]]) -> str:
    """One horizontal bar per row, split into segments (name, share of 1, color), with a legend."""
    names = list(dict.fromkeys((name, fill) for _, parts in bars for name, _, fill in parts))
    legend_rows = math.ceil(len(names) / 5)
    height = 30 + ROW * len(bars) + 24 + 18 * legend_rows
    lines = _open(kind, title, height)
    top, span = 26, W - LEFT - RIGHT
    for i, (name, parts) in enumerate(bars):
        y, x = top + i * ROW, float(LEFT)
        lines.append(f'<text x="{LEFT - 6}" y="{y + 17}" text-anchor="end">{escape(name)}</text>')
        for part, share, fill in parts:
            width = span * share
            lines.append(
                f'<rect class="segment" x="{x:.1f}" y="{y + 5}" width="{max(width, 0.5):.1f}" height="{ROW - 10}" '
                f'fill="{fill}"><title>{escape(name)}: {escape(part)} {share:.0%}</title></rect>'
            )
            if width > 34:
                lines.append(f'<text x="{x + 3:.1f}" y="{y + 17}" font-size="10" fill="#fff">{share:.0%}</text>')
            x += width
    base = top + ROW * len(bars) + 16
    for j, (part, fill) in enumerate(names):
        lx, ly = LEFT + (j % 5) * (span / 5), base + (j // 5) * 18
        lines.append(f'<rect x="{lx:.1f}" y="{ly}" width="10" height="10" fill="{fill}"/>')
        lines.append(f'<text x="{lx + 14:.1f}" y="{ly + 9}" font-size="11">{escape(part)}</text>')
    lines.append("</svg>")
    return "\n".join(lines)
