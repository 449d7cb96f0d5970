"""What makes eager PyTorch noisy: its OpenMP threads and its memory allocator, measured.

    python benchmarks/studies/eager_noise.py [--set openmp|malloc] [--model mobilenet|resnet50] [--batch 1]
                                     [--seconds 2] [--rounds 4]

Eager MobileNet (batch 1) runs in one fresh process per setting and round, the settings
interleaved over rounds so that the machine's load hits them alike. ``--set openmp`` (the default)
compares the OpenMP settings: the default (what a user gets), libgomp's passive wait (threads
sleep at once at a barrier instead of spinning), an active wait (spin forever), and one thread.
``--set malloc`` compares glibc's malloc as Python starts it with the thresholds pinned as
``kiln bench --malloc steady`` pins them (kiln.bench.process.STEADY_TUNABLES). Per setting it
prints the p50, the CV, the stalls (samples above 5x the median, the event that makes a 2-thread
op wait for a preempted thread), how far the p50 moved between processes, and the minor page
faults per run (the fresh pages a run took from the kernel; the lowest and the highest of the
processes). It prints the load average beside them, since other work on the machine is a cause too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from kiln.bench.process import STEADY_TUNABLES

BENCHMARKS = Path(__file__).resolve().parents[1]  # the models live beside the suite
SETS = {
    "openmp": {
        "default (2 threads)": {},
        "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
        "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
        "1 thread": {"KILN_NOISE_THREADS": "1"},
    },
    "malloc": {
        "glibc as it starts (system)": {},
        "thresholds pinned (steady)": {"GLIBC_TUNABLES": ":".join(STEADY_TUNABLES)},
    },
}
CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {models!r})
import torch
from vision import {model}
torch.set_num_threads(int(os.environ.get("KILN_NOISE_THREADS", "2")))
m = {model}(); x = torch.randn({batch}, 3, 224, 224)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode():
    for _ in range(5):
        m(x)
    out, spent, first = [], 0.0, faults()
    while spent < {seconds}:
        t = time.perf_counter(); m(x); dt = time.perf_counter() - t
        out.append(dt * 1e3); spent += dt
omp = sorted({{p.split("/")[-1] for p in open("/proc/self/maps").read().split() if "omp" in p and ".so" in p}})
print(json.dumps({{"ms": out, "omp": omp, "faults": (faults() - first) / len(out)}}))
"""


def _run(model: str, batch: int, seconds: float, env: dict[str, str]) -> dict:
    code = CHILD.format(models=str(BENCHMARKS / "models"), model=model, batch=batch, seconds=seconds)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="openmp", choices=tuple(SETS), help="which settings to compare")
    parser.add_argument("--model", default="mobilenet", choices=("mobilenet", "resnet50"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    variants = SETS[args.set]
    samples: dict[str, list[float]] = {name: [] for name in variants}
    round_p50: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[float]] = {name: [] for name in variants}
    omp: set[str] = set()
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            got = _run(args.model, args.batch, args.seconds, variants[name])
            samples[name] += got["ms"]
            round_p50[name].append(statistics.median(got["ms"]))
            faults[name].append(got["faults"])
            omp |= set(got["omp"])
    load.append(os.getloadavg()[0])
    print(
        f"eager {args.model} batch {args.batch}, {args.rounds} fresh processes x {args.seconds} s per setting; OpenMP runtime: "
        f"{', '.join(sorted(omp)) or 'none found'}; 1-min load {load[0]:.2f} -> {load[1]:.2f} on {os.cpu_count()} CPUs"
    )
    print("| setting | samples | p50 ms | CV | stalls (> 5x p50) | worst ms | p50 spread over processes | faults/run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, ms in samples.items():
        p50 = statistics.median(ms)
        cv = statistics.stdev(ms) / statistics.fmean(ms)
        stalls = sum(v > 5 * p50 for v in ms)
        spread = (max(round_p50[name]) - min(round_p50[name])) / p50
        print(
            f"| {name} | {len(ms)} | {p50:.2f} | {cv:.1%} | {stalls} ({stalls / len(ms):.1%}) | {max(ms):.1f} "
            f"| {spread:.1%} | {min(faults[name]):,.0f}–{max(faults[name]):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
