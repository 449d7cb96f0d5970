"""The machine around the timings: the clock the theoretical peak uses (and says it used), the
report's measured-vs-theoretical check, other processes' CPU time, and the threading facts."""

from __future__ import annotations

import os

import pytest

from kiln.bench.load import CpuSnapshot, machine_load, steal_between
from kiln.bench.peak import Clock, cpu_clock, theoretical_peak
from kiln.bench.worker import THREADING_ENV, threading_facts
from kiln.report import fmt
from kiln.report.markdown import render_markdown
from kiln.results import MeasuredPeak, Peak
from tests.bench.synthetic import synthetic_results

LSCPU = "Architecture:  x86_64\nCPU max MHz:   3500.0000\nCPU min MHz:   800.0000\n"
CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2000.000\nprocessor\t: 1\ncpu MHz\t\t: 2100.500\n"


def test_clock_prefers_cpufreq_then_lscpu_then_cpuinfo() -> None:
    assert cpu_clock(3900.0, LSCPU, CPUINFO) == Clock(3900.0, "cpufreq", True)
    assert cpu_clock(0, LSCPU, CPUINFO) == Clock(3500.0, "lscpu", True)
    assert cpu_clock(0, "Architecture: x86_64\n", CPUINFO) == Clock(2100.5, "cpuinfo", False)
    assert cpu_clock(0, "", "") is None


@pytest.fixture
def intel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops per cycle depend on the vendor read from /proc/cpuinfo: fix it to Intel's."""
    monkeypatch.setattr("kiln.bench.peak._cpu_id", lambda: ("GenuineIntel", 6))


@pytest.mark.usefixtures("intel")
def test_theoretical_peak_says_which_clock_it_used() -> None:
    fp = synthetic_results().fingerprint.model_copy(update={"flags": {"avx512f": True, "avx512_vnni": True}})
    at_max = theoretical_peak(fp, 2, Clock(3500.0, "lscpu", True))
    assert at_max.max_clock_known and at_max.clock_source == "lscpu" and "maximum clock" in (at_max.basis or "")
    assert at_max.fp32_gflops == pytest.approx(2 * 3.5 * 64) and at_max.int8_gflops == pytest.approx(2 * 3.5 * 256)
    guessed = theoretical_peak(fp, 2, Clock(2000.0, "cpuinfo", False))
    assert guessed.max_clock_known is False and "maximum is unknown" in (guessed.basis or "")
    assert theoretical_peak(fp, 2, None).basis is not None  # this machine's clock, or "clock unknown"


@pytest.mark.usefixtures("intel")
def test_report_says_when_the_measured_peak_beats_the_estimate() -> None:
    fp = synthetic_results().fingerprint.model_copy(update={"flags": {"avx512f": True, "avx512_vnni": True}})
    theory = theoretical_peak(fp, 2, Clock(2300.0, "cpuinfo", False))  # int8: 1,177.6 GOP/s
    peak = Peak(measured=MeasuredPeak(fp32_gflops=250.0, int8_gflops=1250.0, threads=2), theoretical=theory)
    results = synthetic_results(peak=peak)
    int8 = next(line for line in fmt.peak_check(results) if line.startswith("int8"))
    assert "above the estimate" in int8 and "2441 MHz or more" in int8
    fp32 = next(line for line in fmt.peak_check(results) if line.startswith("fp32"))
    assert "above" not in fp32 and "(85%)" in fp32
    assert "above the estimate" in render_markdown(results)


def test_other_processes_cpu_time_is_the_machines_minus_kilns() -> None:
    before = CpuSnapshot(wall=100.0, busy=1000.0, steal=5.0, total=4000.0, own=50.0, load=[1.0, 1.0, 1.0])
    after = CpuSnapshot(wall=110.0, busy=1018.0, steal=5.2, total=4020.0, own=60.0, load=[1.5, 1.1, 1.0])
    load = machine_load(before, after)
    assert load.other_cpus == pytest.approx(0.8)  # 18 busy CPU-s, 10 of them kiln's, over 10 s
    assert load.steal_share == pytest.approx(0.01) and load.timed_seconds == 10.0
    assert "other processes kept 0.80 CPUs busy" in fmt.machine_load(synthetic_results(machine_load=load))
    assert "The machine was busy" in render_markdown(synthetic_results(machine_load=load))
    assert steal_between(before, after) == pytest.approx(0.01)
    assert steal_between(after, after) is None  # no tick passed: unknown, not zero
    off_linux = CpuSnapshot(wall=1.0, busy=None, steal=None, total=None, own=0.0, load=None)
    assert steal_between(off_linux, off_linux) is None


def test_threading_facts_record_the_steering_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only what this test sets: an earlier test or an imported library may have set others.
    for name in [k for k in os.environ if k.startswith(THREADING_ENV)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    monkeypatch.setenv("UNRELATED", "1")
    facts = threading_facts()
    assert facts.env == {"KMP_BLOCKTIME": "0", "OMP_WAIT_POLICY": "PASSIVE"}
