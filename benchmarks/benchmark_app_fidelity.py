"""Measurement fidelity: kiln's p50 beside OpenVINO's own ``benchmark_app`` on the same artifact.

    python benchmarks/benchmark_app_fidelity.py build/suite/resnet50 [build/suite/mobilenet ...]
        [--batch 1] [--threads 2] [--seconds 10] [--repeats 2]

For every ``openvino-*`` artifact of each model folder it alternates, ``--repeats`` times, a kiln
measurement (the harness's worker process, latency mode) and ``benchmark_app -api sync -hint
latency -data_shape ... -load_config`` (threads, one stream, inference precision) for the same
number of seconds, so drift hits both alike. The IR is used as saved (its dynamic dims stay
dynamic for both; only the data shape is set), and the inference precision is the one kiln's
manifest recorded (kiln's OpenVINO target always sets ``INFERENCE_PRECISION_HINT``; benchmark_app
would otherwise run bf16 on a CPU with AVX512-BF16). Prints each pair and the ratio
kiln / benchmark_app of the best of the repeats (each tool's least disturbed figure; the ratio of
the medians of the repeats is shown beside it); exit 0 when every ratio is within ``--tolerance``
(default 5 %).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kiln.bench.harness import CellPlan, run_cells
from kiln.config import BenchSettings
from kiln.manifest import Manifest
from kiln.results import MeasuredCell
from kiln.spec import Signature, batch_dim

OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def data_shape(sig: Signature, batch: int) -> str:
    dim = batch_dim(sig)
    sizes = {dim: batch} if dim else {}
    return ",".join(f"{s.name}[{','.join(map(str, sig.shape(s, 'opt', sizes)))}]" for s in sig.inputs)


def run_benchmark_app(folder: Path, manifest: Manifest, batch: int, threads: int, seconds: int) -> float:
    """benchmark_app's median latency in ms.

    benchmark_app refuses ``-nthreads`` together with ``-hint latency`` (its own UI rule, not an
    OpenVINO one), so the thread count, one stream and the inference precision go in through
    ``-load_config``: the plugin then gets exactly the properties kiln's OpenVINO runner sets.
    """
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    sig = manifest.signature
    precision = manifest.execution.execution_precision or manifest.precision
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        properties = {
            "INFERENCE_NUM_THREADS": str(threads),
            "NUM_STREAMS": "1",
            # int8 and int4 IRs run their float parts in f32, as kiln's runner compiles them.
            "INFERENCE_PRECISION_HINT": OV_PRECISION.get(precision, "f32"),
        }
        config.write_text(json.dumps({"CPU": properties}))
        cmd = [
            exe,
            "-m", str(folder / manifest.main_file),
            "-d", "CPU",
            "-api", "sync",
            "-hint", "latency",
            "-load_config", str(config),
            "-data_shape", data_shape(sig, batch),
            "-t", str(seconds),
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"Median:\s+([0-9.]+)\s+(ms|us)", out.stdout)
    if out.returncode != 0 or not found:
        tail = (out.stdout + out.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"benchmark_app failed on {folder}: {' | '.join(tail)}")
    return float(found.group(1)) / (1e3 if found.group(2) == "us" else 1.0)


def run_kiln(folder: Path, manifest: Manifest, batch: int, threads: int, seconds: float) -> float:
    """kiln's p50 in ms, from the same harness ``kiln bench`` uses (one round, one worker)."""
    plan = CellPlan(manifest.target, manifest.precision, folder.name, folder, manifest)
    settings = BenchSettings(batches=[batch], threads=threads, min_seconds=seconds, min_iters=10, rounds=1)
    (cell,) = run_cells([plan], settings.resolve(physical_cores=threads))
    if not isinstance(cell, MeasuredCell):
        raise SystemExit(f"kiln could not measure {folder}: {cell.reason}")
    return cell.latency.p50_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="build/<model> folders with openvino-* artifacts")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10, help="timed seconds per measurement, each tool")
    parser.add_argument("--repeats", type=int, default=2, help="alternating kiln / benchmark_app pairs")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args(argv)

    rows = []
    for model in args.models:
        for folder in sorted(model.glob("openvino-*")):
            manifest = Manifest.find(folder)
            if manifest is None:
                continue
            kiln_ms, app_ms = [], []
            for _ in range(args.repeats):
                kiln_ms.append(run_kiln(folder, manifest, args.batch, args.threads, args.seconds))
                app_ms.append(run_benchmark_app(folder, manifest, args.batch, args.threads, args.seconds))
            # Other work on the machine only ever adds time: the best of the repeats is each
            # tool's least disturbed figure, the median of the repeats is shown beside it.
            ratio = min(kiln_ms) / min(app_ms)
            rows.append((f"{model.name}/{folder.name}", kiln_ms, app_ms, ratio))
            print(
                f"{model.name}/{folder.name} batch {args.batch}: kiln p50 "
                f"{', '.join(f'{v:.3f}' for v in kiln_ms)} ms | benchmark_app median "
                f"{', '.join(f'{v:.3f}' for v in app_ms)} ms | kiln/benchmark_app (best of repeats) {ratio:.3f}",
                flush=True,
            )
    if not rows:
        raise SystemExit("no openvino-* artifact found; build one with kiln build --target openvino:fp32")
    print(
        "\n| artifact | kiln p50 ms, best / median of repeats | benchmark_app median ms, best / median | ratio of best | ratio of medians | within |"
    )
    print("|---|---:|---:|---:|---:|---|")
    ok = True
    for name, k, a, ratio in rows:
        within = abs(ratio - 1) <= args.tolerance
        ok &= within
        med = statistics.median(k) / statistics.median(a)
        print(
            f"| {name} | {min(k):.3f} / {statistics.median(k):.3f} | {min(a):.3f} / {statistics.median(a):.3f} | "
            f"{ratio:.3f} | {med:.3f} | {'yes' if within else 'NO'} |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
