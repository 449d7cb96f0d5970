"""The fleet path's overhead against the sequential one, measured in one run on this machine.

    python benchmarks/fleet_overhead.py [--jobs 2] [--targets onnxruntime,openvino:fp32]

From clean folders: (1) ``kiln bench`` on each model in turn (what ``make bench`` does), (2)
``kiln fleet`` on an in-process cluster (``--jobs`` CPUs) over the same models and targets, (3)
the fleet again, unchanged (no work). Writes ``benchmarks/results/<fingerprint>/fleet/overhead.md``
and ``overhead.json``: wall times, the fleet's per-stage seconds, and both paths' p50 per cell.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="../examples/digits/kiln.toml,mobilenet/kiln.toml")
    parser.add_argument("--targets", default="onnxruntime,openvino:fp32")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    from kiln.bench.run import BenchRun, bench
    from kiln.fleet.runner import FleetOptions, run_fleet
    from kiln.fleet.suite import load_suite
    from kiln.targets import fingerprint

    targets = [t for t in args.targets.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="kiln-fleet-overhead-"))
    settings = (HERE / "suite.toml").read_text().split("[[model]]")[0]
    entries = "".join(
        f'\n[[model]]\nconfig = "{(HERE / m).resolve()}"\ntargets = {json.dumps(targets)}\n'
        for m in args.models.split(",")
    )
    suite_path = work / "suite.toml"
    suite_path.write_text(settings + entries)
    suite = load_suite(suite_path)
    log = lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)  # noqa: E731

    print("== sequential: kiln bench per model", file=sys.stderr)
    start = time.perf_counter()
    sequential = {}
    for config_path, config in suite.configs:
        run = BenchRun(targets=tuple(targets), overrides=suite.overrides(config.model.name), out=work / "seq")
        sequential[config.model.name], _ = bench(config_path, run, progress=log)
    seq_s = time.perf_counter() - start

    print(f"== fleet: in-process cluster, --jobs {args.jobs}", file=sys.stderr)
    options = FleetOptions(suite=suite_path, out=work / "fleet", jobs=args.jobs)
    start = time.perf_counter()
    fleet = run_fleet(options, progress=log)
    fleet_s = time.perf_counter() - start
    start = time.perf_counter()
    again = run_fleet(options, progress=log)
    again_s = time.perf_counter() - start

    fp = fingerprint()
    rows = []
    for run in fleet.runs:
        seq_cells = {(c.key, c.batch): c for c in sequential[run.model].cells}
        for cell in run.results.cells:
            other = seq_cells.get((cell.key, cell.batch))
            if cell.status == "ok" and other is not None and other.status == "ok":
                rows.append((run.model, cell.key, cell.batch, other.latency.p50_ms, cell.latency.p50_ms))
    figures = {
        "fingerprint": fp.id,
        "jobs": args.jobs,
        "targets": targets,
        "models": [c.model.name for _, c in suite.configs],
        "sequential_s": round(seq_s, 1),
        "fleet_s": round(fleet_s, 1),
        "fleet_rerun_s": round(again_s, 1),
        "fleet_rerun_statuses": sorted({s.status for s in again.stages}),
        "fleet_stages": [s.model_dump(include={"id", "status", "seconds"}) for s in fleet.stages],
        "cells": [
            dict(zip(("model", "key", "batch", "sequential_p50_ms", "fleet_p50_ms"), r, strict=True)) for r in rows
        ],
    }
    folder = args.results / fp.id / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        "# kiln fleet: overhead against the sequential path",
        "",
        f"Machine `{fp.id}` ({fp.cpu}, {fp.physical_cores} cores), one run of `benchmarks/fleet_overhead.py`: "
        f"models {', '.join(figures['models'])}, targets eager + {', '.join(targets)}, the suite's settings; "
        "clean build folders, then the fleet on an in-process Ray cluster.",
        "",
        "| path | wall s |",
        "|---|---:|",
        f"| sequential (kiln bench per model) | {seq_s:.1f} |",
        f"| fleet, --jobs {args.jobs}, cold | {fleet_s:.1f} |",
        f"| fleet again, unchanged ({', '.join(figures['fleet_rerun_statuses'])}) | {again_s:.1f} |",
        "",
        "| stage | status | s |",
        "|---|---|---:|",
        *[f"| {s['id']} | {s['status']} | {s['seconds']:.1f} |" for s in figures["fleet_stages"]],
        "",
        "| model | artifact | batch | sequential p50 ms | fleet p50 ms |",
        "|---|---|---:|---:|---:|",
        *[f"| {m} | {k} | {b} | {a:.3g} | {f:.3g} |" for m, k, b, a, f in rows],
        "",
    ]
    (folder / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
