"""Ensembles, quantization-aware training, distillation and pruning methods, each
measured by one ``kiln bench`` run beside what it is compared with.

    python benchmarks/techniques.py [--out build/techniques] [--only ensemble|qat|distill|prune]

- ensemble: ``examples/digits/ensemble.toml``, three CNNs averaged into one graph, each member
  built alone beside it (accuracy, latency and size of the ensemble against each member);
- qat: ``examples/minilm/qat.toml``, the real all-MiniLM-L6-v2, where static int8 after training
  loses sentence-embedding cosine (activation outliers), trained with fake quantization in the loop;
- distill: ``examples/digits/distill.toml``, a quarter-width student distilled from the digits
  CNN, then the teacher (``examples/digits/kiln.toml``) benched with the same targets and settings;
- prune: ``examples/digits/prune_methods.toml``, magnitude against random pruning of the
  convolutions at the same sparsity, beside the dense artifact.

Each run's results.json, report.md and report.html go to
``benchmarks/results/<fingerprint>/techniques/<name>/``; ``report.md`` there sums up every block
on disk (``--summarize`` re-writes it without measuring).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KILN = Path(sys.executable).parent / "kiln"
DIGITS = ROOT / "examples" / "digits"
RUNS = {
    "ensemble": (DIGITS / "ensemble.toml", []),
    "qat": (ROOT / "examples" / "minilm" / "qat.toml", []),
    "distill": (DIGITS / "distill.toml", []),
    "teacher": (DIGITS / "kiln.toml", ["--target", "onnxruntime", "--target", "openvino:fp32"]),
    "prune": (DIGITS / "prune_methods.toml", []),
}
GROUPS = {"ensemble": ["ensemble"], "qat": ["qat"], "distill": ["distill", "teacher"], "prune": ["prune"]}
TIMING = ["--threads", "2", "--min-seconds", "1.5", "--min-iters", "12", "--rounds", "4"]


def run(name: str, out: Path, reports: Path) -> Path:
    config, extra = RUNS[name]
    folder = reports / name
    command = [str(KILN), "bench", str(config), *extra, "-o", str(out), *TIMING, "--report-dir", str(folder)]
    # A failed build or a gate breach exits non-zero; its cells are still in results.json.
    code = subprocess.run(command, check=False).returncode
    if code and not (folder / "results.json").is_file():
        raise SystemExit(f"kiln bench {config} failed with exit {code} and wrote no results")
    return folder / "results.json"


def _cells(results: object, batch: int) -> dict[str, object]:
    return {c.key: c for c in results.batch(batch)}  # type: ignore[attr-defined]


def summary(done: dict[str, Path]) -> str:
    from kiln.report import fmt, variants
    from kiln.report.markdown import _grid
    from kiln.results import MeasuredCell, Results

    runs = {name: Results.model_validate_json(path.read_text()) for name, path in done.items()}
    first = next(iter(runs.values()))
    lines = [
        "# Techniques on digits: ensembles, QAT, distillation, pruning methods",
        "",
        f"Machine `{first.fingerprint.id}` ({first.fingerprint.cpu}, {first.fingerprint.physical_cores} cores); "
        f"measured {time.strftime('%Y-%m-%d')} by `python benchmarks/techniques.py`, one `kiln bench` run per block "
        "(timing: 1.5 s per cell over 4+ interleaved rounds, 2 threads). Each block's full report is in its folder.",
        "",
    ]
    if "ensemble" in runs:
        lines += ["## Ensemble against its members (batch 1)", ""]
        lines += [*_grid(variants.COLUMNS, variants.rows(runs["ensemble"], 1)), "", variants.LEGEND, ""]
    if "qat" in runs:
        lines += ["## Quantization-aware training against post-training quantization", ""]
        lines += [*_grid(variants.QAT_COLUMNS, variants.qat_rows(runs["qat"], 1), left=1), "", variants.QAT_LEGEND, ""]
    if "distill" in runs:
        lines += ["## A distilled student beside its teacher", ""]
        line = variants.distillation_line(runs["distill"])
        lines += [line or "No distillation record.", ""]
        rows = []
        for name in ("teacher", "distill"):
            if name not in runs:
                continue
            for batch in (1, 32):
                for key, cell in _cells(runs[name], batch).items():
                    if isinstance(cell, MeasuredCell):
                        acc = cell.accuracy.value if cell.accuracy else None
                        rows.append(
                            [
                                name if name == "teacher" else "student",
                                key,
                                str(batch),
                                fmt.ms(cell.latency.p50_ms),
                                fmt.speedup(cell),
                                fmt.num(acc),
                                fmt.size(cell.size_bytes),
                            ]
                        )
        lines += _grid(("model", "artifact", "batch", "p50 ms", "vs its eager", "top-1", "size"), rows)
        lines += ["", "Teacher and student are two runs back to back with the same settings: compare p50s as such.", ""]
    if "prune" in runs:
        lines += ["## Magnitude against random pruning (60 % of the convolutions' weights, no fine-tuning)", ""]
        rows = []
        for key, cell in _cells(runs["prune"], 1).items():
            if isinstance(cell, MeasuredCell):
                acc = cell.accuracy
                rows.append(
                    [key, fmt.num(acc.value if acc else None), fmt.size(cell.size_bytes), fmt.ms(cell.latency.p50_ms)]
                )
        lines += [*_grid(("artifact", "top-1", "size (zeros stay in the file)", "p50 ms"), rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/techniques"))
    parser.add_argument("--only", action="append", choices=sorted(GROUPS), default=[])
    parser.add_argument("--summarize", action="store_true", help="only re-write report.md from the runs on disk")
    args = parser.parse_args(argv)
    from kiln.targets import fingerprint

    reports = HERE / "results" / fingerprint().id / "techniques"
    if not args.summarize:
        for group in args.only or list(GROUPS):
            for name in GROUPS[group]:
                run(name, args.out, reports)
    # Every block on disk for this machine, the ones measured before an --only run included.
    done = {name: reports / name / "results.json" for name in RUNS if (reports / name / "results.json").is_file()}
    (reports / "report.md").write_text(summary(done))
    print(f"wrote {reports / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
