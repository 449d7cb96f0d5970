"""How busy the machine was while the cells were timed, and with whose work.

Load averages count runnable threads, kiln's own included, so they cannot say whether *other*
work competed with the benchmark. Linux's ``/proc/stat`` gives the CPU time every process used;
kiln's share is its own and its (waited-for) workers' CPU time from ``getrusage``; the rest, per
second of wall time, is how many CPUs other processes kept busy. A VM's steal time (the
hypervisor running someone else) is reported beside it.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.results import MachineLoad


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the machine's busy and steal time, all of it, and kiln's own."""

    wall: float
    busy: float | None  # user + nice + system + irq + softirq, every CPU (None off Linux)
    steal: float | None
    total: float | None
    own: float  # this process and its waited-for children (the workers)
    load: list[float] | None


def _proc_stat() -> tuple[float, float, float] | None:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq) / hz, steal / hz, sum(ticks) / hz


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def snapshot() -> CpuSnapshot:
    stat = _proc_stat()
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    busy, steal, total = stat if stat else (None, None, None)
    return CpuSnapshot(time.monotonic(), busy, steal, total, own, load_average())


def steal_between(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """The hypervisor's share of every CPU's time between two snapshots (``None`` off Linux, or
    when no tick passed: /proc/stat counts in 1/``SC_CLK_TCK`` s)."""
    if before.total is None or after.total is None or after.total <= before.total:
        return None
    assert before.steal is not None and after.steal is not None
    return min(1.0, max(0.0, (after.steal - before.steal) / (after.total - before.total)))


def machine_load(before: CpuSnapshot, after: CpuSnapshot) -> MachineLoad:
    """The load between two snapshots taken around the timed cells."""
    wall = after.wall - before.wall
    other = None
    if before.busy is not None and after.busy is not None and wall > 0:
        other = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
    steal = steal_between(before, after)
    return MachineLoad(
        load_average_before=before.load,
        load_average_after=after.load,
        cpus=os.cpu_count(),
        timed_seconds=round(wall, 1),
        other_cpus=round(other, 2) if other is not None else None,
        steal_share=round(steal, 4) if steal is not None else None,
    )


def quiet_now(seconds: float = 0.5) -> MachineLoad:
    """The machine's load over ``seconds`` of kiln doing nothing: whether it is quiet enough to
    measure a machine figure now."""
    before = snapshot()
    time.sleep(seconds)
    return machine_load(before, snapshot())


def remeasure_reason(cached: MachineLoad | None, probe: Callable[[], MachineLoad] | None = None) -> str | None:
    """Why a cached machine figure is measured again, or ``None`` to keep it: its load was not
    recorded (a file from an older kiln), or it was taken on a busy machine and this one is quiet
    now (``probe``, by default :func:`quiet_now`, says). A busy figure is kept while the machine
    is still busy: measuring again then would be no better, and the report says how it was
    measured."""
    if cached is None:
        return "the load it was measured at is unknown"
    if (then := cached.busy()) is None:
        return None
    return f"it was measured while {then}" if (probe or quiet_now)().busy() is None else None
