"""Fractions of peak that are what they say: each cell counted against the precision it executes,
no fraction over 100 % in any report, and machine figures re-measured when they were taken on a
busy machine. Figures are injected: nothing here benchmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiln.bench import bandwidth as bw
from kiln.bench import load as machine
from kiln.bench import peak as pk
from kiln.bench.analysis import enrich
from kiln.report import fmt, load_results
from kiln.report.markdown import render_markdown
from kiln.report.roofline import FLAG, compute_precision, count_against_peak
from kiln.results import Bandwidth, FailedCell, MachineLoad, MeasuredCell, MeasuredPeak, Peak, TheoreticalPeak
from tests.bench.synthetic import QUIET, cell, manifest, synthetic_results

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
BUSY = QUIET.model_copy(update={"load_average_before": [17.0, 16.5, 15.0], "other_cpus": 1.7})
STOLEN = QUIET.model_copy(update={"steal_share": 0.12})
PEAK = Peak(
    measured=MeasuredPeak(fp32_gflops=100.0, bf16_gflops=200.0, int8_gflops=400.0, machine_load=QUIET),
    theoretical=TheoreticalPeak(),
)


@pytest.mark.parametrize(
    ("execution", "requested", "expected"),
    [
        ("fp32", "fp32", "fp32"),
        ("fp32", "bf16", "fp32"),  # bf16 asked for, no bf16 instructions: it runs fp32
        ("bf16", "bf16", "bf16"),
        ("int8-dynamic", "int8-dynamic", "int8"),
        ("int8 weights, int8 compute", "int8-dynamic", "int8"),
        ("int8 weights, bf16 compute", "int8-weights", "bf16"),
        ("int4 weights, int8 compute", "int4", "int8"),
        ("fp32 kernels on int8-rounded values (q/dq not fused)", "int8", "fp32"),
        ("int8 (mixed: {'int8': 72, 'fp32': 24})", "int8-weights", "int8"),
        ("int4 (mixed: {'int4': 71, 'fp32': 24, 'int8': 1})", "int4", "int8"),
        ("fp32 (no MatMul had a stored 2-D weight to quantize)", "int4", "fp32"),
        (None, "int8-dynamic", "int8"),
        ("fp16", "fp16", None),  # no fp16 peak is measured: no fraction, rather than fp32's
    ],
)
def test_compute_precision_is_what_the_runtime_executes(execution: str | None, requested: str, expected: str) -> None:
    assert compute_precision(execution, requested) == expected


def test_fraction_uses_the_peak_of_the_precision_the_cell_executes() -> None:
    unset = {"execution_precision": None, "gflops": None, "roofline_fraction": None}
    raw: list[MeasuredCell | FailedCell] = [
        cell("onnxruntime-int8-dynamic", 1, 1.0, precision="int8-dynamic", **unset),
        cell("openvino-bf16", 1, 1.0, **unset),
        cell("aoti-int8-weights", 1, 1.0, precision="int8-weights", **unset),
    ]
    manifests = {
        "onnxruntime-int8-dynamic": manifest("onnxruntime-int8-dynamic", "int8-dynamic"),
        "openvino-bf16": manifest("openvino-bf16", "fp32"),
        "aoti-int8-weights": manifest("aoti-int8-weights", "int8 weights, bf16 compute"),
    }
    flops = {c.key: {1: 10**8} for c in raw}
    out = {c.key: c for c in enrich(raw, manifests, flops, PEAK.model_copy(deep=True), 0.1)}
    rate = {key: c.gflops for key, c in out.items() if isinstance(c, MeasuredCell)}
    assert out["onnxruntime-int8-dynamic"].roofline_fraction == pytest.approx(rate["onnxruntime-int8-dynamic"] / 400)
    assert out["openvino-bf16"].roofline_fraction == pytest.approx(rate["openvino-bf16"] / 100)
    assert out["aoti-int8-weights"].roofline_fraction == pytest.approx(rate["aoti-int8-weights"] / 200)
    precisions = {key: c.roofline_precision for key, c in out.items() if isinstance(c, MeasuredCell)}
    assert precisions == {"onnxruntime-int8-dynamic": "int8", "openvino-bf16": "fp32", "aoti-int8-weights": "bf16"}


def test_a_cell_faster_than_its_peak_raises_that_peak_and_is_flagged() -> None:
    fast = cell("openvino-int8", 4, 1.0, execution_precision="int8", gflops=500.0)
    slow = cell("onnxruntime-int8", 4, 1.0, execution_precision="int8", gflops=250.0)
    fp32 = cell("onnxruntime-fp32", 4, 1.0, gflops=50.0)
    peak = PEAK.model_copy(deep=True)
    cells: list[MeasuredCell | FailedCell] = [fast, slow, fp32]
    count_against_peak(cells, peak)
    count_against_peak(cells, peak)  # a re-render counts again: nothing doubles
    assert fast.roofline_fraction == pytest.approx(1.0) and slow.roofline_fraction == pytest.approx(0.5)
    assert fp32.roofline_fraction == pytest.approx(0.5)  # fp32's measured peak stands
    flagged = [f for f in fast.flags if f.startswith(FLAG)]
    assert len(flagged) == 1 and "500 GOP/s in int8, over the measured 400" in flagged[0]
    assert not slow.flags and peak.raised is not None and len(peak.raised) == 1
    assert (peak.raised[0].precision, peak.raised[0].gflops, peak.raised[0].cell) == (
        "int8",
        500.0,
        "openvino-int8 batch 4",
    )
    assert peak.measured.int8_gflops == 400.0  # what was measured stays on record
    results = synthetic_results(peak=peak, cells=cells, flops={4: 10**6})
    assert "The int8 peak is openvino-int8 batch 4's 500 GOP/s, which beat the measured 400" in render_markdown(results)


def _of_peak(report: str) -> list[float]:
    """Every figure of the "of peak" column of a report.md's tables."""
    found, column = [], None
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "of peak" in cells:
            column = cells.index("of peak")
        elif column is not None and line.startswith("|") and len(cells) > column:
            if m := re.fullmatch(r"([\d.]+)%", cells[column]):
                found.append(float(m.group(1)))
        elif not line.startswith("|"):
            column = None
    return found


COMMITTED = [
    p
    for p in sorted(RESULTS_DIR.rglob("results.json"))
    if str(json.loads(p.read_text()).get("schema", "")).startswith("kiln.results/")
]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(RESULTS_DIR)))
def test_no_report_of_committed_results_shows_a_fraction_over_100(path: Path) -> None:
    results = load_results(path)
    fractions = [c.roofline_fraction for c in results.cells if isinstance(c, MeasuredCell) and c.roofline_fraction]
    assert all(f <= 1.0 + 1e-9 for f in fractions)
    shown = _of_peak(render_markdown(results))
    assert all(f <= 100.0 for f in shown)
    assert len(shown) == (0 if results.generative else len(fractions))  # a causal LM's report has no such column


def test_the_committed_int8_dynamic_cell_is_counted_against_int8() -> None:
    # It read 674 % against the fp32 peak (a GEMM micro-benchmark run at load 17).
    results = load_results(RESULTS_DIR / "intel-r-xeon-r-processor-2c-234875fc" / "bert_base" / "results.json")
    ort = next(c for c in results.cells if c.key == "onnxruntime-int8-dynamic" and c.batch == 1)
    assert isinstance(ort, MeasuredCell) and ort.roofline_precision == "int8" and ort.gflops
    assert ort.roofline_fraction == pytest.approx(ort.gflops / results.peak.measured.int8_gflops)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("load", "busy"),
    [
        (QUIET, None),
        (BUSY, "other processes kept 1.70 CPUs busy"),
        (STOLEN, "the hypervisor stole 12.0% of CPU time"),
        (MachineLoad(load_average_before=[3.0, 2.0, 1.0], cpus=2), "load average 3 on 2 CPUs"),
        (MachineLoad(load_average_before=[1.0, 1.0, 1.0], cpus=2), None),
        (MachineLoad(), "the machine's load was not recorded"),
    ],
)
def test_a_span_is_busy_when_others_or_the_hypervisor_took_the_cpus(load: MachineLoad, busy: str | None) -> None:
    assert load.busy() == busy


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "kiln"


def _cache_peak(cache: Path, fp_id: str, figure: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"peak-{fp_id}-t2.json").write_text(json.dumps({"schema": pk.PEAK_SCHEMA, "threads": 2, **figure}))


@pytest.mark.parametrize(
    ("cached_load", "now", "remeasured"),
    [
        (QUIET, BUSY, False),  # a quiet figure stands
        (BUSY, QUIET, True),  # a busy one is measured again once the machine is quiet
        (BUSY, BUSY, False),  # ... and kept, said to be busy, while it is not
        (None, BUSY, True),  # an older file's load is unknown: measured again at once
    ],
)
def test_a_cached_peak_taken_on_a_busy_machine_is_measured_again_when_quiet(
    cache: Path, monkeypatch: pytest.MonkeyPatch, cached_load: MachineLoad | None, now: MachineLoad, remeasured: bool
) -> None:
    fp = synthetic_results().fingerprint
    load = cached_load.model_dump(mode="json", exclude_none=True) if cached_load else None
    _cache_peak(cache, fp.id, {"fp32_gflops": 41.0, **({"machine_load": load} if load else {})})
    calls: list[int] = []

    def fake(threads: int, seconds: float = 0.5) -> MeasuredPeak:
        calls.append(threads)
        return MeasuredPeak(fp32_gflops=160.0, threads=threads, machine_load=now)

    monkeypatch.setattr(pk, "measure_peak", fake)
    monkeypatch.setattr(machine, "quiet_now", lambda seconds=0.5: now)
    got = pk.machine_peak(fp, 2)
    assert (calls == [2]) is remeasured
    assert got.measured.fp32_gflops == (160.0 if remeasured else 41.0)
    written = MeasuredPeak.model_validate_json((cache / f"peak-{fp.id}-t2.json").read_text())
    assert written.machine_load == (now if remeasured else cached_load)


def test_a_cached_bandwidth_taken_on_a_busy_machine_is_measured_again_when_quiet(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp = synthetic_results().fingerprint
    cache.mkdir(parents=True)
    old = Bandwidth(schema_id=bw.BANDWIDTH_SCHEMA, threads=2, gbps=1.6, method="triad", machine_load=BUSY)
    (cache / f"bandwidth-{fp.id}-t2.json").write_text(old.model_dump_json(by_alias=True))
    monkeypatch.setattr(
        bw, "measure_bandwidth", lambda threads: Bandwidth(gbps=30.0, method="triad", machine_load=QUIET)
    )
    monkeypatch.setattr(machine, "quiet_now", lambda seconds=0.5: BUSY)
    assert bw.machine_bandwidth(fp, 2).gbps == 1.6  # still busy: kept
    monkeypatch.setattr(machine, "quiet_now", lambda seconds=0.5: QUIET)
    assert bw.machine_bandwidth(fp, 2).gbps == 30.0  # quiet: measured again
    assert bw.machine_bandwidth(fp, 2).gbps == 30.0  # and that one stands


def test_a_report_says_in_one_line_when_its_peak_was_measured_on_a_busy_machine() -> None:
    busy = PEAK.model_copy(update={"measured": PEAK.measured.model_copy(update={"machine_load": BUSY})})
    line = next(w for w in fmt.figure_warnings(synthetic_results(peak=busy)) if "peak" in w)
    assert "measured on a busy machine (other processes kept 1.70 CPUs busy; load average 17" in line
    assert f"⚠ {line}" in render_markdown(synthetic_results(peak=busy))
    assert fmt.figure_warnings(synthetic_results(peak=PEAK)) == []
    unknown = PEAK.model_copy(update={"measured": PEAK.measured.model_copy(update={"machine_load": None})})
    assert "at a load not recorded" in fmt.figure_warnings(synthetic_results(peak=unknown))[0]
