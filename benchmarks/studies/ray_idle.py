"""What an idle in-process Ray cluster costs the machine a fleet benchmarks on.

    python benchmarks/studies/ray_idle.py [--seconds 60]

Starts the cluster the way ``kiln fleet --jobs 2`` does (:func:`kiln.fleet.runner.connect`),
times ``ray.init``, a first task and 100 more, then sums the CPU time of every Ray process
(GCS, raylet, dashboard agent, idle workers) over ``--seconds`` of doing nothing. On a 2-core
box that share is taken from whatever a bench cell measures meanwhile. Writes
``benchmarks/results/<fingerprint>/fleet/ray_idle.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]


def _ray_cpu(me: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each process that belongs to Ray, by pid, named by its title
    (``ray::IDLE``), binary (``raylet``) or Ray script (``log_monitor.py``)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        if proc.pid == me:
            continue
        args = proc.info["cmdline"] or []
        name = proc.info["name"] or ""
        script = next((Path(a).name for a in args if "/site-packages/ray/" in a and a.endswith(".py")), None)
        if args and args[0].startswith("ray::"):
            name = args[0].split()[0]
        elif script is not None:
            name = script
        elif name not in ("raylet", "gcs_server"):
            continue
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        found[proc.pid] = (name, times.user + times.system)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--results", type=Path, default=BENCHMARKS / "results")
    args = parser.parse_args(argv)

    from kiln.fleet.runner import FleetOptions, connect
    from kiln.targets import fingerprint

    start = time.perf_counter()
    connect(FleetOptions(suite=Path("suite.toml"), out=Path("unused"), jobs=2))  # sets Ray's auth mode first
    init_s = time.perf_counter() - start
    import ray

    @ray.remote
    def nothing() -> int:
        return 1

    start = time.perf_counter()
    ray.get(nothing.remote())
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    ray.get([nothing.remote() for _ in range(100)])
    hundred_s = time.perf_counter() - start

    time.sleep(5)  # let the first task's worker settle
    before = _ray_cpu(os.getpid())
    start = time.perf_counter()
    time.sleep(args.seconds)
    after = _ray_cpu(os.getpid())
    span = time.perf_counter() - start
    ray.shutdown()

    shares: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in before:
            shares[name] = shares.get(name, 0.0) + (cpu - before[pid][1]) / span
    total = sum(shares.values())
    fp = fingerprint()
    cores = fp.logical_cores or 1
    lines = [
        "# An idle in-process Ray cluster: what it takes from a bench cell",
        "",
        f"Machine `{fp.id}` ({fp.cpu}, {cores} logical cores), one run of `benchmarks/studies/ray_idle.py` "
        f"(the cluster `kiln fleet --jobs 2` starts, idle for {span:.0f} s).",
        "",
        f"- `ray.init`: {init_s:.1f} s; a first task: {first_s:.2f} s; 100 more: {hundred_s:.2f} s.",
        f"- Ray's processes while idle: **{total:.1%} of one core**, {total / cores:.1%} of this machine.",
        "",
        "| process | share of one core |",
        "|---|---:|",
        *[f"| {name} | {share:.2%} |" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])],
        "",
    ]
    folder = args.results / fp.id / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ray_idle.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
