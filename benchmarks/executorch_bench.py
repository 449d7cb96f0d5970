"""The ExecuTorch target beside eager and ONNX Runtime, measured in one run on one machine.

    python benchmarks/executorch_bench.py [--out build/executorch-bench] [--threads 1,2] [--only digits|minilm]

``kiln bench`` runs digits (executorch fp32 and int8) and MiniLM (executorch fp32 and
int8-dynamic) with eager and onnxruntime, once per thread count, with the suite's timing
settings; each run's results.json, report.md and report.html go to
``benchmarks/results/<fingerprint>/executorch/<model>-t<threads>/``, and ``report.md`` there
sums up what the issue asks: .pte sizes, delegated shares (ops and estimated FLOPs), the ops
left on portable kernels, and the speed-up vs eager of every cell.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KILN = Path(sys.executable).parent / "kiln"
MODELS = {
    "digits": (ROOT / "examples/digits/kiln.toml", ["eager", "onnxruntime", "executorch:fp32", "executorch:int8"]),
    "minilm": (
        ROOT / "examples/minilm/kiln.toml",
        ["eager", "onnxruntime", "executorch:fp32", "executorch:int8-dynamic"],
    ),
}
TIMING = ["--min-seconds", "1.5", "--min-iters", "10", "--warmup-seconds", "0.3", "--rounds", "2"]


def bench(config: Path, targets: list[str], threads: int, out: Path, report_dir: Path) -> dict[str, Any]:
    """One ``kiln bench`` run; returns its results.json."""
    selectors = [arg for t in targets for arg in ("--target", t)]
    command = [str(KILN), "bench", str(config), *selectors, "--threads", str(threads), "-o", str(out)]
    subprocess.run([*command, *TIMING, "--report-dir", str(report_dir)], check=True)
    return json.loads((report_dir / "results.json").read_text())


def _manifest(out: Path, model: str, key: str) -> dict[str, Any]:
    path = out / model / key / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summary(out: Path, runs: dict[tuple[str, int], dict[str, Any]]) -> str:
    """report.md: the artifacts (size, delegation) and every cell's speed against eager."""
    fingerprint = next(iter(runs.values()))["fingerprint"]
    lines = [
        "# ExecuTorch target: .pte beside eager and ONNX Runtime",
        "",
        f"Machine `{fingerprint['id']}` ({fingerprint['cpu']}, {fingerprint['physical_cores']} cores), executorch "
        f"{fingerprint['toolchain'].get('executorch', '?')}, torch {fingerprint['toolchain'].get('torch', '?')}; "
        f"measured {time.strftime('%Y-%m-%d')} in one run by `python benchmarks/executorch_bench.py`.",
        "",
        "1-minute load average before each run (the machine is shared; see each run's report.md for CVs): "
        + ", ".join(
            f"{model} t{threads} {r['machine_load']['load_average_before'][0]:.2f}"
            for (model, threads), r in runs.items()
            if r.get("machine_load")
        )
        + ".",
        "",
        "## Artifacts",
        "",
        "| model | artifact | .pte bytes | delegated ops | delegated FLOPs (est.) | subgraphs | on portable kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(m for m, _ in runs):
        for target in MODELS[model][1]:
            if not target.startswith("executorch"):
                continue
            key = target.replace(":", "-")
            execution = _manifest(out, model, key).get("execution", {})
            d = execution.get("delegation")
            if not d:
                lines.append(f"| {model} | {key} | not built | | | | |")
                continue
            portable = ", ".join(f"{op} ×{n}" for op, n in d["portable_ops"].items()) or "none"
            lines.append(
                f"| {model} | {key} | {execution['pte_bytes']:,} | {d['op_share']:.0%} | {d['flop_share']:.1%} | "
                f"{d['subgraphs']} | {portable} |"
            )
    lines += [
        "",
        "## Latency (p50) and speed-up vs eager",
        "",
        "| model | threads | artifact | batch | p50 ms | p90 ms | p99 ms | speed-up | first inference ms | load s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, threads), results in runs.items():
        for cell in results["cells"]:
            if cell["status"] != "ok":
                lines.append(
                    f"| {model} | {threads} | {cell['key']} | {cell['batch']} | {cell['status']}: "
                    f"{cell['reason'][:80]} | | | | | | |"
                )
                continue
            lat, speedup = cell["latency"], cell.get("speedup_vs_eager")
            lines.append(
                f"| {model} | {threads} | {cell['key']} | {cell['batch']} | {lat['p50_ms']:.3g} | {lat['p90_ms']:.3g} | "
                f"{lat['p99_ms']:.3g} | {f'{speedup:.2f}×' if speedup else '-'} | {cell['first_inference_ms']:.3g} | "
                f"{cell['load_s']:.2f} | {cell['peak_rss_bytes'] / 2**20:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "executorch-bench")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", choices=list(MODELS), help="measure one model (the summary reads every run)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from kiln.targets import fingerprint

    folder = HERE / "results" / fingerprint().id / "executorch"
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for model, (config, targets) in MODELS.items():
        if args.only and model != args.only:
            continue
        for threads in (int(t) for t in args.threads.split(",")):
            runs[(model, threads)] = bench(config, targets, threads, args.out, folder / f"{model}-t{threads}")
    for path in sorted(folder.glob("*-t*/results.json")):  # earlier runs of the other models
        model, _, threads = path.parent.name.rpartition("-t")
        if model in MODELS and threads.isdigit():
            runs.setdefault((model, int(threads)), json.loads(path.read_text()))
    runs = dict(sorted(runs.items(), key=lambda item: (list(MODELS).index(item[0][0]), item[0][1])))
    (folder / "report.md").write_text(summary(args.out, runs))
    print(f"wrote {folder / 'report.md'}")


if __name__ == "__main__":
    main()
