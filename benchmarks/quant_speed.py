"""Speed of quantized artifacts vs eager fp32, measured in one run with kiln's own harness.

Usage (after ``kiln build examples/minilm/quant.toml --out OUT``):

    python benchmarks/quant_speed.py OUT/minilm [--batch 1] [--threads 2] [--min-seconds 5] [--rounds 3]

Every artifact in the folder runs in its own worker process, interleaved with eager over several
rounds (warm-up by time and count, then until both the minimum time and count are met); the
table shows each artifact's p50 latency and its speed-up over eager measured in the same run,
beside the accuracy figures its manifest recorded at build time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="build/<model> folder with an eager artifact")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()

    from kiln.bench.run import BenchRun, bench
    from kiln.config import BenchSettings
    from kiln.manifest import Manifest
    from kiln.results import MeasuredCell

    settings = BenchSettings(
        batches=[args.batch], threads=args.threads, mode="latency", min_seconds=args.min_seconds, rounds=args.rounds
    )
    run = BenchRun(overrides=settings, report_dir=args.model_dir / "quant-speed")
    results, _ = bench(args.model_dir, run, progress=lambda msg: print(f"... {msg}", flush=True))
    if args.json:
        args.json.write_text(json.dumps(results.to_json(), indent=2))
    cells = results.batch(args.batch)
    eager = next((c.latency.p50_ms for c in cells if c.target == "eager" and isinstance(c, MeasuredCell)), None)
    print(f"\nbatch {args.batch}, {args.threads} threads, p50 over {args.rounds} interleaved rounds (one run)")
    print("| target | precision | p50 ms | cv | speed-up vs eager fp32 | metric | metric drop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cell in cells:
        built = Manifest.find(args.model_dir / cell.key)
        evaluation = built.gate.evaluation if built else None
        metric = f"{evaluation.value:.4f}" if evaluation else "-"
        drop = f"{evaluation.drop:+.4f}" if evaluation else "-"
        if not isinstance(cell, MeasuredCell):
            print(f"| {cell.target} | {cell.precision} | {cell.status}: {cell.reason} | - | - | {metric} | {drop} |")
            continue
        ms, lat = cell.latency.p50_ms, cell.latency
        ratio = f"{eager / ms:.2f}x" if eager and ms else "-"
        cv = f"{lat.cv:.2f}" + (" (unstable)" if lat.unstable else "")
        print(f"| {cell.target} | {cell.precision} | {ms:.3f} | {cv} | {ratio} | {metric} | {drop} |")


if __name__ == "__main__":
    main()
