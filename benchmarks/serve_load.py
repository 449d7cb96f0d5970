"""Load-test ``kiln serve`` with tritonclient.http: p50/p99 latency, throughput and the mean batch
size, with dynamic batching off (``--max-delay-ms 0``) and on, at one concurrency.

    python benchmarks/serve_load.py [--artifact build/digits/onnxruntime-fp32] [--concurrency 8]
                                    [--requests 200] [--rows 1] [--delays 0,2] [--threads 1]
                                    [--rounds 3] [--results benchmarks/results]

Each setting gets its own server (``python -m kiln.cli serve ... --port 0``); N client threads
each send M requests of ``--rows`` rows with binary tensors, one at a time, after a warm-up. The
latency is the client's (request sent to response decoded); the batch size is the server's own
``kiln_batch_size`` histogram over the timed requests. Clients and server share the machine's
cores, so on a small machine the figures are as much about the clients as the server: the
fingerprint and load average are recorded beside them. The default artifact is built first
(``kiln build examples/digits/kiln.toml -t onnxruntime``) when missing. Results go to
``<results>/<fingerprint>/serve/<model>-<target dir>-c<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "build" / "digits" / "onnxruntime-fp32"
LISTENING = re.compile(r"at http://[^:]+:(\d+)/v2/models/(\S+);")
WARMUP = 50


@dataclass
class Run:
    max_delay_ms: float
    rounds: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    throughput_per_round: list[float]
    rows_per_s: float
    mean_batch_requests: float
    mean_batch_rows: float
    exit_codes: list[int]


def start(artifact: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    cmd = [sys.executable, "-m", "kiln.cli", "serve", str(artifact), "--port", "0", *flags]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"kiln serve exited {proc.returncode}: {log.read_text()}")
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/v2/health/ready", timeout=5):
                    return proc, int(match.group(1)), match.group(2)
            except OSError:
                pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"kiln serve was not ready in 300 s: {log.read_text()}")


def batch_figures(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("kiln_batch_size_sum", "kiln_batch_size_count", "kiln_batch_rows_sum"):
                out[s.name] = s.value
    return out


def load(port: int, model: str, args: argparse.Namespace, count: int) -> tuple[list[float], int, float]:
    """``count`` requests from each client: every latency (s), the errors, and the wall time."""
    import tritonclient.http as http

    x = np.random.default_rng(0).standard_normal((args.rows, 1, 8, 8)).astype(np.float32)

    def client_loop(count: int) -> tuple[list[float], int]:
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        tensor = http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        wanted = [http.InferRequestedOutput("output", binary_data=True)]
        times, errors = [], 0
        for _ in range(count):
            start = time.perf_counter()
            try:
                client.infer(model, [tensor], outputs=wanted).as_numpy("output")
            except Exception:  # counted, not raised: the figure is "zero errors"
                errors += 1
            times.append(time.perf_counter() - start)
        client.close()
        return times, errors

    with ThreadPoolExecutor(args.concurrency) as pool:
        start = time.perf_counter()
        parts = list(pool.map(client_loop, [count] * args.concurrency))
        wall = time.perf_counter() - start
    return [t for times, _ in parts for t in times], sum(e for _, e in parts), wall


@dataclass
class Round:
    latencies: list[float]
    errors: int
    wall: float
    batches: float
    batched_requests: float
    batched_rows: float
    exit_code: int


def measure(artifact: Path, delay: float, args: argparse.Namespace, log: Path) -> Round:
    """One round: a fresh server at this delay, a warm-up, the timed load, SIGTERM."""
    flags = ["--max-delay-ms", f"{delay:g}"] + (["--threads", str(args.threads)] if args.threads else [])
    proc, port, model = start(artifact, flags, log)
    try:
        load(port, model, args, WARMUP // args.concurrency + 1)
        before = batch_figures(port)
        latencies, errors, wall = load(port, model, args, args.requests)
        after = {k: v - before.get(k, 0) for k, v in batch_figures(port).items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    return Round(
        latencies,
        errors,
        wall,
        after.get("kiln_batch_size_count", 0),
        after.get("kiln_batch_size_sum", 0),
        after.get("kiln_batch_rows_sum", 0),
        code,
    )


def summarize(delay: float, rounds: list[Round], rows: int) -> Run:
    """Latency percentiles over every timed request of every round; throughput over their wall time."""
    ms = np.array([t for r in rounds for t in r.latencies]) * 1000
    wall = sum(r.wall for r in rounds)
    batches = sum(r.batches for r in rounds)
    return Run(
        max_delay_ms=delay,
        rounds=len(rounds),
        requests=len(ms),
        errors=sum(r.errors for r in rounds),
        seconds=round(wall, 3),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        mean_ms=round(float(ms.mean()), 3),
        throughput_rps=round(len(ms) / wall, 1),
        throughput_per_round=[round(len(r.latencies) / r.wall, 1) for r in rounds],
        rows_per_s=round(len(ms) * rows / wall, 1),
        mean_batch_requests=round(sum(r.batched_requests for r in rounds) / batches, 2) if batches else 0.0,
        mean_batch_rows=round(sum(r.batched_rows for r in rounds) / batches, 2) if batches else 0.0,
        exit_codes=[r.exit_code for r in rounds],
    )


def table(runs: list[Run], meta: dict[str, Any]) -> str:
    head = "| dynamic batching | p50 ms | p99 ms | mean ms | req/s | req/s per round | mean batch (requests) | errors |"
    lines = [head, "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in runs:
        label = "off (--max-delay-ms 0)" if r.max_delay_ms == 0 else f"on (--max-delay-ms {r.max_delay_ms:g})"
        lines.append(
            f"| {label} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.mean_ms:.2f} | {r.throughput_rps:.0f} | "
            f"{', '.join(f'{t:.0f}' for t in r.throughput_per_round)} | {r.mean_batch_requests:.2f} | {r.errors} |"
        )
    fp = meta["fingerprint"]
    lines += [
        "",
        f"`kiln serve {meta['artifact']}` ({meta['target']}, {meta['threads']} runtime threads); "
        f"{meta['concurrency']} tritonclient.http client threads x {meta['requests']} requests of {meta['rows']} "
        f"row(s), binary tensors, after a warm-up; {meta['rounds']} interleaved rounds, a fresh server each.  ",
        f"Machine `{fp['id']}`: {fp['cpu']}, {fp['logical_cores']} logical cores, load average "
        f"{meta['load_average_before']} before; clients and server share the cores.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per client.")
    parser.add_argument("--rows", type=int, default=1, help="Rows per request.")
    parser.add_argument("--delays", default="0,2", help="--max-delay-ms values; 0 is batching off.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds, a fresh server each.")
    parser.add_argument("--threads", type=int, default=1, help="Runtime threads of the server (0: its default).")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from kiln.manifest import Manifest
    from kiln.store import write_json
    from kiln.targets import fingerprint

    if not (args.artifact / "manifest.json").is_file():
        if args.artifact != DEFAULT:
            sys.exit(f"{args.artifact} is not an artifact folder; build it with kiln build")
        kiln = Path(sys.executable).with_name("kiln")
        subprocess.run([str(kiln), "build", "examples/digits/kiln.toml", "-t", "onnxruntime"], cwd=ROOT, check=True)
    manifest = Manifest.read(args.artifact)
    fp = fingerprint()
    load_before = [round(v, 2) for v in os.getloadavg()]
    delays = [float(d) for d in args.delays.split(",")]
    done: dict[float, list[Round]] = {d: [] for d in delays}
    with tempfile.TemporaryDirectory(prefix="kiln-serve-bench-") as scratch:
        for i in range(args.rounds):  # interleaved, so a busy spell of the machine hits every setting
            for d in delays:
                done[d].append(measure(args.artifact, d, args, Path(scratch) / f"serve-{d:g}-{i}.log"))
    runs = [summarize(d, rounds, args.rows) for d, rounds in done.items()]
    meta = {
        "artifact": str(args.artifact.relative_to(ROOT) if args.artifact.is_relative_to(ROOT) else args.artifact),
        "target": f"{manifest.target}:{manifest.precision}",
        "threads": args.threads or "default",
        "concurrency": args.concurrency,
        "requests": args.requests,
        "rows": args.rows,
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "fingerprint": fp.model_dump(mode="json"),
    }
    out = args.results / fp.id / "serve"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{manifest.model}-{args.artifact.name}-c{args.concurrency}"
    write_json(out / f"{stem}.json", {**meta, "runs": [asdict(r) for r in runs]})
    text = table(runs, meta)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.json and .md")
    if any(r.errors or any(r.exit_codes) for r in runs):
        sys.exit("errors under load, or a server that did not exit 0 on SIGTERM")


if __name__ == "__main__":
    main()
