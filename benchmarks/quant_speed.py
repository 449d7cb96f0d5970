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
from typing import Any


def _latency_ms(cell: dict[str, Any]) -> float | None:
    value = (cell.get("latency") or {}).get("p50_ms")
    return float(value) if value is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="build/<model> folder with an eager artifact")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()

    from kiln.bench.run import BenchRequest, bench

    request = BenchRequest(
        batches=[args.batch],
        threads=args.threads,
        mode="latency",
        min_seconds=args.min_seconds,
        rounds=args.rounds,
        report_dir=args.model_dir / "quant-speed",
    )
    results, _ = bench(args.model_dir, request, progress=lambda msg: print(f"... {msg}", flush=True))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    cells = [c for c in results["cells"] if c.get("batch") == args.batch]
    eager = next((_latency_ms(c) for c in cells if c.get("target") == "eager"), None)
    print(f"\nbatch {args.batch}, {args.threads} threads, p50 over {args.rounds} interleaved rounds (one run)")
    print("| target | precision | p50 ms | cv | speed-up vs eager fp32 | metric | metric drop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cell in cells:
        ms = _latency_ms(cell)
        manifest_path = args.model_dir / str(cell.get("key")) / "manifest.json"
        gate = json.loads(manifest_path.read_text()).get("gate", {}) if manifest_path.is_file() else {}
        evaluation = gate.get("evaluation") or {}
        ratio = f"{eager / ms:.2f}x" if eager and ms else "-"
        metric = f"{evaluation['value']:.4f}" if "value" in evaluation else "-"
        drop = f"{evaluation['drop']:+.4f}" if "drop" in evaluation else "-"
        shown = f"{ms:.3f}" if ms else f"{cell.get('status')}: {cell.get('reason')}"
        latency = cell.get("latency") or {}
        cv = f"{latency['cv']:.2f}" + (" (unstable)" if latency.get("unstable") else "") if "cv" in latency else "-"
        print(f"| {cell.get('target')} | {cell.get('precision')} | {shown} | {cv} | {ratio} | {metric} | {drop} |")


if __name__ == "__main__":
    main()
