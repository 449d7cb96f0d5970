"""Do two suite runs agree? Every speed-up of one run beside the other's, with both intervals.

    python benchmarks/studies/agreement.py RUN_A RUN_B [--within 0.05] [--out FILE.md]

RUN_A and RUN_B are two ``benchmarks/results/<fingerprint>/`` folders written by
``run_suite.py`` (``--results`` puts a run elsewhere, so two runs can sit side by side). Cells
match on model, key and batch. The difference is B's speed-up over A's, minus one. It prints
(and writes with ``--out``) one Markdown table, then how many ratios agree within ``--within``
(5 % by default, issue 15's bar). It exits 1 when one does not, 2 when the runs share no cell.

Why a pair disagrees, told apart from the intervals alone: where the two 95 % intervals overlap,
the runs are consistent and the miss is the intervals' width (more rounds narrow it); where they
do not, the ratio moved between the runs by more than either run's own noise allows (the host
changed). The summary also gives how many pairs would agree were nothing to change between the
runs (each speed-up normal on the log scale with its interval's spread), and how many times the
rounds the median cell would need for its interval to reach +-2.5 %. Then, per model and batch,
who moved: eager's p50 in B over A against the artifacts' (a speed-up is eager's p50 over the
artifact's, so where eager alone moved, every ratio of the batch moves with it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from kiln.report import results_in


def _cells(run: Path):
    """(model, cell) for every measured cell of a run's results, eager's included."""
    for results in results_in(run):
        for cell in json.loads(results.read_text())["cells"]:
            if cell.get("status") == "ok":
                yield results.parent.name, cell


def speedups(run: Path) -> dict[tuple[str, str, int], dict]:
    """(model, key, batch) -> the cell, for every cell of the run with a speed-up."""
    return {
        (model, cell["key"], cell["batch"]): cell
        for model, cell in _cells(run)
        if cell.get("speedup_vs_eager") and cell["key"] != "eager-fp32"
    }


def p50s(run: Path) -> dict[tuple[str, str, int], float]:
    """(model, key, batch) -> p50 in ms, for every measured cell of the run, eager's included."""
    return {
        (model, cell["key"], cell["batch"]): cell["latency"]["p50_ms"]
        for model, cell in _cells(run)
        if (cell.get("latency") or {}).get("p50_ms")
    }


def who_moved(a: dict[tuple[str, str, int], float], b: dict[tuple[str, str, int], float]) -> list[str]:
    """Per model and batch: eager's p50 move between the runs beside the artifacts' moves."""
    rows = []
    for model, batch in sorted({(m, n) for m, _, n in a if (m, "eager-fp32", n) in a and (m, "eager-fp32", n) in b}):
        eager = b[(model, "eager-fp32", batch)] / a[(model, "eager-fp32", batch)] - 1
        moves = [b[k] / a[k] - 1 for k in a if k in b and k[0] == model and k[2] == batch and k[1] != "eager-fp32"]
        if not moves:
            continue
        middle = statistics.median(moves)
        rows.append(
            f"| {model} | {batch} | {eager:+.1%} | {middle:+.1%} [{min(moves):+.1%} to {max(moves):+.1%}] | "
            f"{(1 + eager) / (1 + middle) - 1:+.1%} |"
        )
    if not rows:
        return []
    return [
        "| model | batch | eager p50, B / A - 1 | artifacts' p50, median [range] | speed-ups follow |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def _ci(cell: dict) -> str:
    low, high = cell.get("speedup_ci_low"), cell.get("speedup_ci_high")
    shown = f"{cell['speedup_vs_eager']:.2f}×"
    return f"{shown} [{low:.2f}–{high:.2f}]" if low and high else shown


def _spread(cell: dict) -> float | None:
    """The speed-up's standard error on the log scale, read off its 95 % interval."""
    low, high = cell.get("speedup_ci_low"), cell.get("speedup_ci_high")
    return math.log(high / low) / (2 * 1.96) if low and high and high > low > 0 else None


def _overlap(x: dict, y: dict) -> bool | None:
    if not all(c.get(k) for c in (x, y) for k in ("speedup_ci_low", "speedup_ci_high")):
        return None
    return max(x["speedup_ci_low"], y["speedup_ci_low"]) <= min(x["speedup_ci_high"], y["speedup_ci_high"])


def _chance(x: dict, y: dict, within: float) -> float | None:
    """How likely the pair agrees within ``within`` were the true ratio the same in both runs."""
    sx, sy = _spread(x), _spread(y)
    if sx is None or sy is None:
        return None
    bound = math.log1p(within) / math.hypot(sx, sy) / math.sqrt(2)
    return math.erf(bound)


def table(a: dict, b: dict, within: float) -> tuple[list[str], int, int]:
    """The Markdown rows, and how many shared ratios agree and how many there are."""
    rows = [
        "| model | cell | batch | run A | rounds | run B | rounds | B / A - 1 | agrees | intervals overlap |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|:---:|",
    ]
    agree = 0
    shared = [k for k in a if k in b]
    for key in shared:
        x, y = a[key], b[key]
        diff = y["speedup_vs_eager"] / x["speedup_vs_eager"] - 1
        ok = abs(diff) <= within
        agree += ok
        overlap = {True: "yes", False: "**no**", None: "-"}[_overlap(x, y)]
        rows.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_ci(x)} | {x.get('rounds') or '-'} | {_ci(y)} | "
            f"{y.get('rounds') or '-'} | {diff:+.1%} | {'yes' if ok else '**no**'} | {overlap} |"
        )
    return rows, agree, len(shared)


def diagnosis(a: dict, b: dict, within: float, target: float = 0.025) -> list[str]:
    """Why the pairs that disagree do: the intervals' width, or a move between the runs."""
    shared = [k for k in a if k in b]
    missed = [k for k in shared if abs(b[k]["speedup_vs_eager"] / a[k]["speedup_vs_eager"] - 1) > within]
    moved = [k for k in missed if _overlap(a[k], b[k]) is False]
    chances = [c for k in shared if (c := _chance(a[k], b[k], within)) is not None]
    # Rounds scale as the square of the width: the factor each cell's interval needs to reach +-target.
    factors = [
        (s * 1.96 / math.log1p(target)) ** 2 for k in shared for c in (a[k], b[k]) if (s := _spread(c)) is not None
    ]
    lines = [
        f"- Of the {len(missed)} that do not agree, {len(missed) - len(moved)} have overlapping intervals "
        f"(consistent runs, too wide to meet the bar) and {len(moved)} moved by more than either interval "
        "allows (the host changed between the runs)."
    ]
    if chances:
        lines.append(
            f"- Were nothing to change between the runs, {sum(chances):.1f} of {len(chances)} pairs would be "
            f"expected to agree within {within:.0%}, from their intervals alone."
        )
    if factors:
        lines.append(
            f"- For an interval of +-{target:.1%}, the median cell would need {statistics.median(factors):.1f}× "
            f"the rounds it ran (the widest {max(factors):.1f}×)."
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--within", type=float, default=0.05, help="the agreement bar, a fraction (0.05 = 5 %%)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    a, b = speedups(args.run_a), speedups(args.run_b)
    rows, agree, shared = table(a, b, args.within)
    if not shared:
        print(f"agreement: {args.run_a} and {args.run_b} share no cell with a speed-up", file=sys.stderr)
        return 2
    only = sorted(set(a) ^ set(b))
    lines = [
        f"Run A: `{args.run_a}`; run B: `{args.run_b}`.",
        "",
        *rows,
        "",
        f"{agree} of {shared} speed-ups agree within {args.within:.0%}"
        + (f"; {len(only)} cells are in one run only" if only else "")
        + ".",
        "",
        *diagnosis(a, b, args.within),
    ]
    moved = who_moved(p50s(args.run_a), p50s(args.run_b))
    if moved:
        lines += ["", "Who moved: each batch's p50, run B over run A.", "", *moved]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if agree == shared else 1


if __name__ == "__main__":
    sys.exit(main())
