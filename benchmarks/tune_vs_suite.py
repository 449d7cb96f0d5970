"""Is ``kiln tune``'s winner at least as fast as the suite's best cell, within the same gate?

    python benchmarks/tune_vs_suite.py TUNE.json RESULTS.json [--out FILE.md]

TUNE.json is ``build/<model>/tune/tune.json``; RESULTS.json the suite's ``results.json`` of the
same model (``benchmarks/results/<fingerprint>/<model>/``). The suite's best cell is its fastest
at the tune's batch (p50 in latency mode, items/s in throughput mode) among the cells that passed
their gate: parity, and with ``[evaluation]`` a metric drop within the tune's budget. Eager is a
cell like any other.

The suite and the tune are different runs, so their raw ratio carries both runs' noise
(``benchmarks/studies/agreement.py`` shows how much two suite runs move). The verdict therefore rests, in
this order, on: (1) the tune's own measurement of the suite's best configuration (same artifact,
default options, same threads) in the run that measured the winner last, which is a ratio from
one run; (2) the winner being that very configuration (a tie by construction); (3) the two
speed-ups over eager, each from its own run; (4) the raw ratio. All that apply are printed.
Exits 1 when the winner is slower on the basis used, 2 when either side has nothing to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def best_cell(results: dict, batch: int, mode: str, max_drop: float | None) -> dict | None:
    """The suite's fastest gated cell at ``batch``."""
    ok = []
    for cell in results["cells"]:
        if cell.get("status") != "ok" or cell["batch"] != batch or cell.get("parity_passed") is False:
            continue
        accuracy = cell.get("accuracy")
        if max_drop is not None and accuracy and accuracy.get("drop") is not None and accuracy["drop"] > max_drop:
            continue
        ok.append(cell)
    if not ok:
        return None
    if mode == "throughput":
        return max(ok, key=lambda c: c["latency"]["throughput"])
    return min(ok, key=lambda c: c["latency"]["p50_ms"])


def same_config(tune: dict, cell: dict) -> dict | None:
    """The tune's candidate that is the suite cell's configuration: its artifact with default
    options at its threads."""
    return next(
        (
            c
            for c in tune["candidates"]
            if c.get("artifact") == cell["key"] and not c.get("options") and c.get("threads") == cell.get("threads")
        ),
        None,
    )


def _faster(mine: float, theirs: float, throughput: bool) -> float:
    return mine / theirs if throughput else theirs / mine


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tune", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, help="also write the comparison here")
    args = parser.parse_args()
    tune, results = json.loads(args.tune.read_text()), json.loads(args.results.read_text())
    winner = next((c for c in tune["candidates"] if c["id"] == tune.get("winner")), None)
    best = best_cell(results, tune["batch"], tune["mode"], tune.get("max_metric_drop"))
    if winner is None or not winner["measurements"] or best is None:
        print("tune_vs_suite: no winner in the tune, or no gated suite cell at its batch", file=sys.stderr)
        return 2
    won = winner["measurements"][-1]
    throughput = tune["mode"] == "throughput"
    figure = "throughput" if throughput else "p50_ms"
    mine, theirs = won[figure], best["latency"]["throughput" if throughput else "p50_ms"]
    unit = "items/s" if throughput else "ms p50"
    drop = winner.get("metric_drop")
    suite_drop = (best.get("accuracy") or {}).get("drop")
    lines = [
        f"Model `{tune['model']}`, batch {tune['batch']}, objective {tune['objective']}, metric budget "
        f"{tune.get('max_metric_drop')}.",
        "",
        "| | artifact | threads | speed | speed-up over eager | metric drop |",
        "|---|---|---:|---:|---:|---:|",
        f"| tune winner | {winner['id']} | {winner['threads']} | {mine:.4g} {unit} | "
        f"{_x(won.get('speedup_vs_eager'))} | {drop if drop is not None else '-'} |",
        f"| suite's best | {best['key']} | {best['threads']} | {theirs:.4g} {unit} | "
        f"{_x(best.get('speedup_vs_eager'))} | {suite_drop if suite_drop is not None else '-'} |",
        "",
    ]
    verdicts = []  # (basis, ratio), best basis first
    same = same_config(tune, best)
    if same is not None and same["id"] != winner["id"]:
        there = next((m for m in same["measurements"] if m.get("run") == won.get("run")), None)
        if there is not None:
            ratio = _faster(mine, there[figure], throughput)
            verdicts.append(("one run", ratio))
            lines.append(
                f"- One run (`{won.get('run')}`): the tune measured the suite's best configuration "
                f"({same['id']}) at {there[figure]:.4g} {unit}; the winner is **{ratio:.2f}x** it."
            )
    if same is not None and same["id"] == winner["id"]:
        verdicts.append(("same configuration", 1.0))
        lines.append(
            f"- The winner is the suite's best cell's own configuration ({same['id']}): a tie by construction; "
            "the runs differ only by their noise."
        )
    if won.get("speedup_vs_eager") and best.get("speedup_vs_eager"):
        ratio = won["speedup_vs_eager"] / best["speedup_vs_eager"]
        verdicts.append(("speed-ups over eager", ratio))
        lines.append(f"- Speed-ups over eager, each within its own run: the winner's is {ratio:.2f}x the suite's.")
    raw = _faster(mine, theirs, throughput)
    verdicts.append(("raw, across two runs", raw))
    lines.append(f"- Raw, across the two runs: {raw:.2f}x.")
    basis, faster = verdicts[0]
    lines += [
        "",
        f"The winner is {faster:.2f}x the suite's best cell on the {basis} basis "
        f"({'at least as fast' if faster >= 1 else 'slower'}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if faster >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
