"""Do two suite runs agree? Every speed-up of one run beside the other's, with both intervals.

    python benchmarks/agreement.py RUN_A RUN_B [--within 0.05] [--out FILE.md]

RUN_A and RUN_B are two ``benchmarks/results/<fingerprint>/`` folders written by
``run_suite.py`` (``--results`` puts a run elsewhere, so two runs can sit side by side). Cells
match on model, key and batch. The difference is B's speed-up over A's, minus one. It prints
(and writes with ``--out``) one Markdown table, then how many ratios agree within ``--within``
(5 % by default, issue 15's bar). It exits 1 when one does not, 2 when the runs share no cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kiln.report import results_in


def speedups(run: Path) -> dict[tuple[str, str, int], dict]:
    """(model, key, batch) -> the cell, for every cell of the run with a speed-up."""
    found = {}
    for results in results_in(run):
        doc = json.loads(results.read_text())
        for cell in doc["cells"]:
            if cell.get("status") == "ok" and cell.get("speedup_vs_eager") and cell["key"] != "eager-fp32":
                found[(results.parent.name, cell["key"], cell["batch"])] = cell
    return found


def _ci(cell: dict) -> str:
    low, high = cell.get("speedup_ci_low"), cell.get("speedup_ci_high")
    shown = f"{cell['speedup_vs_eager']:.2f}×"
    return f"{shown} [{low:.2f}–{high:.2f}]" if low and high else shown


def table(a: dict, b: dict, within: float) -> tuple[list[str], int, int]:
    """The Markdown rows, and how many shared ratios agree and how many there are."""
    rows = [
        "| model | cell | batch | run A | rounds | run B | rounds | B / A - 1 | agrees |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    agree = 0
    shared = [k for k in a if k in b]
    for key in shared:
        x, y = a[key], b[key]
        diff = y["speedup_vs_eager"] / x["speedup_vs_eager"] - 1
        ok = abs(diff) <= within
        agree += ok
        rows.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_ci(x)} | {x.get('rounds') or '-'} | {_ci(y)} | "
            f"{y.get('rounds') or '-'} | {diff:+.1%} | {'yes' if ok else '**no**'} |"
        )
    return rows, agree, len(shared)


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
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if agree == shared else 1


if __name__ == "__main__":
    sys.exit(main())
