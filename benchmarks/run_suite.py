"""Run the benchmark suite (``make bench``): every model in ``suite.toml``, one harness, one
machine; then write ``benchmarks/results/<fingerprint>/``.

    python benchmarks/run_suite.py [--out build/suite] [--only resnet50] [--min-seconds 1]

Each model gets ``kiln bench`` (building what is missing or stale); its results.json, report.md
and report.html are copied under the fingerprint folder, and ``report.md`` there sums the suite
up: speed-up vs eager per model, target and batch with its 95 % interval and rounds, the CV and
stalls of every cell, and the machine's other work. An entry's ``settings`` override the suite's
for that model alone; an entry whose ``requires`` file is missing is skipped with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.results import FailedCell, MeasuredCell, Results

HERE = Path(__file__).resolve().parent


def _row(model: str, cells: list[MeasuredCell | FailedCell]) -> list[str]:
    from kiln.report import fmt
    from kiln.results import FailedCell

    out = []
    for cell in cells:
        if isinstance(cell, FailedCell):
            out.append(f"| {model} | {cell.key} | {cell.batch} | {cell.status}: {cell.reason[:80]} | | | | | | |")
            continue
        lat = cell.latency
        peak = f"{cell.roofline_fraction:.1%}" if cell.roofline_fraction is not None else "-"
        unstable = " ⚠" if lat.unstable else ""
        out.append(
            f"| {model} | {cell.key} | {cell.batch} | {lat.p50_ms:.3g} | {lat.p90_ms:.3g} | {fmt.speedup(cell)} | "
            f"{cell.rounds or '-'} | {lat.cv:.1%}{unstable} | {fmt.stalls(cell)} | {peak} |"
        )
    return out


def _load(run: Results) -> str:
    load = run.machine_load
    before, after = (load.load_average_before, load.load_average_after) if load else (None, None)
    return f"{before[0]:.1f} → {after[0]:.1f}" if before and after else "-"


def _other(run: Results) -> str:
    load = run.machine_load
    return f"{load.other_cpus:.2f}" if load and load.other_cpus is not None else "-"


def summary(runs: list[Results], failures: list[str], seconds: float, skipped: list[str] | None = None) -> str:
    from kiln.report import fmt

    fp = runs[0].fingerprint if runs else None
    machine = (
        f"Machine `{fp.id}`: {fp.cpu}, {fp.physical_cores} cores, {fp.memory_gib} GiB, {fp.os}; "
        f"flags: {', '.join(k for k, v in fp.flags.items() if v) or 'none of note'}.  "
        if fp
        else "Machine: no model ran.  "
    )
    lines = [
        "# kiln benchmark suite",
        "",
        machine,
        f"Toolchains: {', '.join(f'{k} {v}' for k, v in (fp.toolchain if fp else {}).items())}.  ",
        f"Suite wall time {seconds / 60:.1f} min. Each model's full report (all figures, plots, parity, "
        "fingerprint and peak) is in its folder: `<model>/report.md`, `<model>/report.html`, `<model>/results.json`.",
        "",
        "vs eager: the median of per-round speed-ups (each round times eager and the cell moments apart) with its "
        "distribution-free 95 % interval; rounds: how many (more where the interval was wide). stalls: the share "
        "(count) of runs over 5× the cell's median, kept in the figures. A causal LM's p50 is its inter-token latency.",
        "",
        "| model | target | batch | p50 ms | p90 ms | vs eager [95% CI] | rounds | CV | stalls | of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for batch in run.settings.batches:
            lines += _row(run.model, run.batch(batch))
    flags = [f"- {r.model} {c.key} batch {c.batch}: {f}" for r in runs for c in r.cells for f in c.flags]
    lines += ["", "⚠: CV above the unstable threshold (see each model's report).", "", "## Flags", ""]
    lines += [f for f in flags if "unstable" not in f] or ["None besides instability."]
    if failures:
        lines += ["", "## Models that did not run", "", *[f"- {f}" for f in failures]]
    if skipped:
        lines += ["", "## Models skipped", "", *[f"- {f}" for f in skipped]]
    settings = runs[0].settings.model_dump(exclude={"batches"}) if runs else {}
    lines += [
        "",
        "## Machine load during each model's run",
        "",
        "Load averages count kiln's own work (about 1 while a cell runs); other CPUs is the mean number of CPUs "
        "that processes other than kiln kept busy while the cells were timed (from /proc/stat).",
        "",
        "| model | 1-min load average, before → after | other CPUs busy | threading |",
        "|---|---|---:|---|",
        *[f"| {r.model} | {_load(r)} | {_other(r)} | {fmt.threading(r)} |" for r in runs],
    ]
    if runs:
        lines += ["", f"Peak, measured vs theoretical: {'; '.join(fmt.peak_check(runs[0])) or 'not known'}."]
        warned: dict[str, list[str]] = {}
        for r in runs:
            for line in fmt.figure_warnings(r):
                warned.setdefault(line, []).append(r.model)
        lines += [f"⚠ {', '.join(models)}: {line}" for line, models in warned.items()]
        lines += [f"Theoretical peak basis: {runs[0].peak.theoretical.basis}."]
    lines += ["", f"Settings (every model): {settings}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=HERE / "suite.toml")
    parser.add_argument("--out", type=Path, default=Path("build/suite"), help="build folder for the artifacts")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where <fingerprint>/ goes")
    parser.add_argument("--only", action="append", default=[], help="run only this model (repeatable)")
    parser.add_argument("--min-seconds", type=float, help="override the suite's timed seconds per cell")
    parser.add_argument("--summarize", action="store_true", help="only re-render report.md from the last run")
    args = parser.parse_args(argv)

    from kiln.bench.run import BenchRun, bench
    from kiln.config import BenchSettings
    from kiln.errors import KilnError
    from kiln.fleet.suite import load_suite
    from kiln.report import load_results
    from kiln.report.console import print_results
    from kiln.targets import fingerprint

    try:  # the one reader of suite files, kiln fleet's too
        suite = load_suite(args.suite, tuple(args.only))
    except KilnError as err:
        print(f"kiln: error: {err}", file=sys.stderr)
        return err.exit_code
    cli = BenchSettings(min_seconds=args.min_seconds) if args.min_seconds else BenchSettings()
    folder = args.results / fingerprint().id
    folder.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        meta = json.loads((folder / "suite.json").read_text())
        runs = [load_results(folder / name / "results.json") for name in meta["models"]]
        (folder / "report.md").write_text(summary(runs, meta["failures"], meta["seconds"], meta.get("skipped")))
        return 0
    runs, failures, start = [], [], time.perf_counter()
    skipped = [f"{name}: {why}" for name, why in suite.skipped]
    for why in skipped:
        print(f"== {why}", file=sys.stderr, flush=True)
    for config_path, config in suite.configs:
        name = config.model.name
        print(f"== {name} ({config_path})", file=sys.stderr, flush=True)
        entry = suite.entries[name]
        mine = suite.overrides(name).merged(cli)
        run = BenchRun(targets=tuple(entry.targets), overrides=mine, out=args.out, report_dir=folder / name)
        try:
            results, _ = bench(config_path, run, progress=lambda msg, n=name: print(f"   {n}: {msg}", file=sys.stderr))
        except KilnError as err:
            failures.append(f"{name}: {err}")
            print(f"kiln: error: {name}: {err}", file=sys.stderr)
            continue
        print_results(results)
        runs.append(results)
    if runs:
        seconds = time.perf_counter() - start
        meta = {
            "models": [r.model for r in runs],
            "failures": failures,
            "skipped": skipped,
            "seconds": round(seconds, 1),
        }
        (folder / "suite.json").write_text(json.dumps(meta, indent=2) + "\n")
        (folder / "report.md").write_text(summary(runs, failures, seconds, skipped))
        print(f"suite report: {folder / 'report.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
