"""Does the hypervisor's steal move the speed-ups? Every round's steal beside its ratios.

    python benchmarks/studies/steal_effect.py RUN [--out FILE.md]

RUN is a ``benchmarks/results/<fingerprint>/`` folder (or a fleet's ``OUT/<kind>/``) whose cells
record ``round_steal`` (kiln reads /proc/stat around every interleaved round). Per model and
batch it gives the rounds kept and dropped (``max_round_steal``), the steal of the kept rounds
(median and worst), and, over the cells with a speed-up, the median Spearman correlation
between a round's steal and that round's speed-up. A positive correlation says steal slows eager
more than the artifacts (each ratio is eager's figure over the cell's); near zero, that the
rounds' noise is not the steal the rounds saw. Exits 2 when no cell records its steal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from kiln.report import results_in


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation, or None where either side is constant or too short."""
    if len(x) < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else None


def rows(run: Path) -> list[dict]:
    """One row per model and batch: rounds, drops, steal and the steal-to-ratio correlation."""
    out = []
    for results in results_in(run):
        doc = json.loads(results.read_text())
        limit = doc.get("settings", {}).get("max_round_steal")
        for batch in sorted({c["batch"] for c in doc["cells"]}):
            cells = [c for c in doc["cells"] if c["batch"] == batch and c.get("status") == "ok"]
            eager = next((c for c in cells if c["key"] == "eager-fp32" and c.get("round_steal")), None)
            if eager is None:
                continue
            steal = eager["round_steal"]
            rhos = []
            for cell in cells:
                ratios = cell.get("speedup_rounds")
                if cell is eager or not ratios:
                    continue
                rho = spearman(steal[: len(ratios)], ratios)
                if rho is not None:
                    rhos.append(rho)
            out.append(
                {
                    "model": results.parent.name,
                    "batch": batch,
                    "limit": limit,
                    "rounds": len(steal),
                    "dropped": eager.get("rounds_dropped"),
                    "steal_median": statistics.median(steal),
                    "steal_max": max(steal),
                    "rho_median": statistics.median(rhos) if rhos else None,
                    "cells": len(rhos),
                }
            )
    return out


def render(found: list[dict]) -> list[str]:
    lines = [
        "| model | batch | rounds kept | dropped for steal | steal, median / worst kept | "
        "steal vs speed-up, median Spearman (cells) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in found:
        dropped = "-" if r["dropped"] is None else f"{r['dropped']} (over {r['limit']:.0%})"
        rho = "-" if r["rho_median"] is None else f"{r['rho_median']:+.2f} ({r['cells']})"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['rounds']} | {dropped} | "
            f"{r['steal_median']:.1%} / {r['steal_max']:.1%} | {rho} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    found = rows(args.run)
    if not found:
        print(
            f"steal_effect: no cell in {args.run} records round_steal (a run from kiln 0.x before it?)", file=sys.stderr
        )
        return 2
    text = "\n".join([f"# Steal against speed-ups: `{args.run.name}`", "", *render(found), ""])
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
