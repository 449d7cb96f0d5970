"""Is a run-to-run difference the harness's or the machine's? Twin workers of one artifact.

    python benchmarks/studies/twins.py BUILD/<model> [--batch 32] [--reps 4] [--keys eager-fp32,onnxruntime-fp32]

Each artifact in ``--keys`` gets two worker processes (twin a, loaded first, and twin b), all
interleaved in the same rounds by the one harness (:func:`kiln.bench.harness.run_cells`), as
``kiln bench`` does. A twin pair's per-round ratio (b's speed over a's) has no drift in it (both
ran moments apart) and no artifact difference, so its median is the harness's own bias
(load order, position in a round, process placement) and its interval the noise of one
round. ``--reps`` fresh runs in a row then show whether the *speed-ups over eager* move between
runs more than twins do: if they do, what moves them is the machine's state over minutes, which
no interleaving inside a run can cancel. Writes ``benchmarks/results/<fingerprint>/twins.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--keys", default="eager-fp32,onnxruntime-fp32")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--results", type=Path, default=BENCHMARKS / "results")
    args = parser.parse_args(argv)

    from kiln.bench.harness import BASELINE, CellPlan, run_cells
    from kiln.bench.stats import ratio_interval
    from kiln.config import BenchSettings
    from kiln.manifest import Manifest
    from kiln.results import MeasuredCell
    from kiln.targets import fingerprint

    missing = [k for k in args.keys.split(",") if k and not (args.model_dir / k / "manifest.json").is_file()]
    if missing:
        print(f"twins: no built {', '.join(missing)} in {args.model_dir}; run kiln build first", file=sys.stderr)
        return 2
    keys = [k for k in args.keys.split(",") if k]
    if BASELINE not in keys:
        keys.insert(0, BASELINE)
    fp = fingerprint()
    settings = BenchSettings(
        threads=fp.physical_cores,
        min_seconds=2.0,
        min_iters=12,
        warmup_seconds=0.3,
        rounds=args.rounds,
        max_rounds=args.rounds,
        batches=[args.batch],
    ).resolve(fp.physical_cores)
    name = {(k, "a"): (BASELINE if k == BASELINE else f"{k}~a") for k in keys} | {(k, "b"): f"{k}~b" for k in keys}
    rows = []
    for rep in range(1, args.reps + 1):
        plans = []
        for key in keys:
            manifest = Manifest.read(args.model_dir / key)
            for twin in ("a", "b"):
                plans.append(
                    CellPlan(manifest.target, manifest.precision, name[key, twin], args.model_dir / key, manifest)
                )
        cells = {c.key: c for c in run_cells(plans, settings)}
        if not all(isinstance(c, MeasuredCell) for c in cells.values()):
            failed = [f"{c.key}: {c.reason}" for c in cells.values() if not isinstance(c, MeasuredCell)]
            print(f"twins: a cell failed ({'; '.join(failed)})", file=sys.stderr)
            return 1
        for key in keys:
            a, b = cells[name[key, "a"]], cells[name[key, "b"]]
            if key == BASELINE:  # b's speed-up over eager is eager a's figure over b's
                twin = b.speedup_rounds or []
            else:  # (eager / a) / (eager / b) per round: a's figure over b's
                twin = [sb / sa for sa, sb in zip(a.speedup_rounds or [], b.speedup_rounds or [], strict=True)]
            found = ratio_interval(twin)
            speedup = "" if key == BASELINE else f"{a.speedup_vs_eager:.3f}"
            rows.append(
                f"| {rep} | {key} | {found.value:.3f} [{found.low:.3f}–{found.high:.3f}] | {speedup} | "
                f"{a.latency.cv:.2f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# Twin workers: the harness's bias against the machine's drift",
        "",
        f"Machine `{fp.id}` ({fp.cpu}, {fp.physical_cores} cores), `benchmarks/studies/twins.py {args.model_dir.name}` "
        f"at batch {args.batch}, {args.rounds} rounds per run, {args.reps} runs in a row. A twin ratio is twin b's "
        "speed over twin a's (same artifact, two processes, same rounds): 1.0 is no bias. The speed-up is twin a's "
        "over eager (as `kiln bench` reports it); its spread over the runs against the twin intervals is the "
        "machine's drift.",
        "",
        "| run | artifact | twin ratio, median [95 % interval] | speed-up over eager (twin a) | twin a's CV |",
        "|---:|---|---|---:|---:|",
        *rows,
        "",
    ]
    folder = args.results / fp.id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "twins.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
