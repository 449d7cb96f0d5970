"""Do fresh worker processes make two runs agree? The same model benched again and again, with
each cell's rounds in one worker process per batch against spread over several fresh ones.

    python benchmarks/studies/process_effect.py [--model digits] [--runs 3] [--processes 1 4] [--out FILE.md]

It runs ``run_suite.py --only MODEL`` ``--runs`` times for each ``--processes`` value,
interleaved (1, 4, 1, 4, ...) so that drift of the machine falls on both alike, every run with the
suite's settings plus ``processes``. Per setting and cell it prints every run's speed-up, the
spread (largest over smallest, minus one) and how many pairs of runs agree within ``--within``
(issue 15's bar: 5 %). Run it on a quiet machine; nothing else should be timed meanwhile.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from agreement import speedups  # the one reader of a run's speed-ups, beside this script

BENCHMARKS = Path(__file__).resolve().parents[1]  # the suite and its runner


def _suite_with(processes: int) -> Path:
    """suite.toml with ``processes`` in its [settings], beside it (its model paths are relative)."""
    text = (BENCHMARKS / "suite.toml").read_text()
    text = re.sub(r"^processes = .*\n", "", text, flags=re.M)
    text = text.replace("[settings]\n", f"[settings]\nprocesses = {processes}\n", 1)
    with tempfile.NamedTemporaryFile("w", dir=BENCHMARKS, prefix=".suite-", suffix=".toml", delete=False) as f:
        f.write(text)
    return Path(f.name)


def _speedups(folder: Path, model: str) -> dict[tuple[str, int], float]:
    """(key, batch) -> speed-up of the model's cells in one run's ``<folder>/<fingerprint>/``."""
    run = next(p for p in folder.iterdir() if p.is_dir())
    return {(k, b): cell["speedup_vs_eager"] for (m, k, b), cell in speedups(run).items() if m == model}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--within", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=Path("build/process-effect"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    found: dict[int, list[dict[tuple[str, int], float]]] = {p: [] for p in args.processes}
    for run, processes in itertools.product(range(args.runs), args.processes):
        suite = _suite_with(processes)
        results = args.work / f"p{processes}-run{run}"
        try:
            print(f"== run {run + 1}/{args.runs}, processes = {processes}", file=sys.stderr, flush=True)
            command = [sys.executable, str(BENCHMARKS / "run_suite.py"), "--suite", str(suite), "--only", args.model]
            command += ["--results", str(results), "--out", str(args.work / "build")]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        finally:
            suite.unlink()
        found[processes].append(_speedups(results, args.model))
    lines = [f"`{args.model}`, {args.runs} runs per setting, interleaved; speed-up vs eager per run.", ""]
    lines += ["| processes | cell | batch | runs | spread | pairs within 5 % |", "|---:|---|---:|---|---:|---:|"]
    totals = {}
    for processes, runs in found.items():
        agree = pairs = 0
        for cell in sorted(set.intersection(*(set(r) for r in runs))):
            values = [r[cell] for r in runs]
            ok = sum(abs(b / a - 1) <= args.within for a, b in itertools.combinations(values, 2))
            n = len(values) * (len(values) - 1) // 2
            agree, pairs = agree + ok, pairs + n
            shown = ", ".join(f"{v:.2f}×" for v in values)
            lines.append(
                f"| {processes} | {cell[0]} | {cell[1]} | {shown} | {max(values) / min(values) - 1:.1%} | {ok}/{n} |"
            )
        totals[processes] = (agree, pairs)
    lines += [
        "",
        *(f"processes = {p}: {a} of {n} pairs of runs agree within {args.within:.0%}." for p, (a, n) in totals.items()),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
