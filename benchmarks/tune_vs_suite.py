"""Is ``kiln tune``'s winner at least as fast as the suite's best cell, within the same gate?

    python benchmarks/tune_vs_suite.py TUNE.json RESULTS.json [--out FILE.md]

TUNE.json is ``build/<model>/tune/tune.json``; RESULTS.json the suite's ``results.json`` of the
same model (``benchmarks/results/<fingerprint>/<model>/``). The suite's best cell is its fastest
at the tune's batch (p50 in latency mode, items/s in throughput mode) among the cells that passed
their gate: parity, and with ``[evaluation]`` a metric drop within the tune's budget. Eager is a
cell like any other. The two come from different runs on the same machine, so the ratio carries
both runs' noise (``benchmarks/agreement.py`` shows how much two suite runs move). Exits 1 when
the winner is slower, 2 when either side has nothing to compare.
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
    mine, theirs = (
        (won["throughput"], best["latency"]["throughput"]) if throughput else (won["p50_ms"], best["latency"]["p50_ms"])
    )
    faster = mine / theirs if throughput else theirs / mine
    unit = "items/s" if throughput else "ms p50"
    drop = winner.get("metric_drop")
    suite_drop = (best.get("accuracy") or {}).get("drop")
    lines = [
        f"Model `{tune['model']}`, batch {tune['batch']}, objective {tune['objective']}, metric budget "
        f"{tune.get('max_metric_drop')}.",
        "",
        "| | artifact | threads | speed | metric drop |",
        "|---|---|---:|---:|---:|",
        f"| tune winner | {winner['id']} | {winner['threads']} | {mine:.4g} {unit} | {drop if drop is not None else '-'} |",
        f"| suite's best | {best['key']} | {best['threads']} | {theirs:.4g} {unit} | "
        f"{suite_drop if suite_drop is not None else '-'} |",
        "",
        f"The winner is {faster:.2f}x the suite's best cell ({'at least as fast' if faster >= 1 else 'slower'}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0 if faster >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
