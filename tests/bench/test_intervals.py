"""Ratios you can trust: per-round speed-ups and their interval, stalls, the adaptive rounds rule
(on synthetic rounds, and through the harness with a scripted worker), and the reports showing
the interval. No wall-clock assertion: the scripted worker answers the timings it is told to."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kiln.bench.analysis import enrich
from kiln.bench.harness import CellPlan, run_cells
from kiln.bench.process import Launch
from kiln.bench.rounds import continuing, too_stolen
from kiln.bench.stats import ratio_interval, round_figure, round_ratios, stalls
from kiln.config import BenchSettings
from kiln.report import fmt
from kiln.report.console import print_results
from kiln.report.html import render_html
from kiln.report.markdown import render_markdown
from kiln.results import MeasuredCell
from tests.bench.synthetic import cell, synthetic_results


def _rounds(rng: np.random.Generator, ms: float, rounds: int, noise: float, per_round: int = 20) -> list[list[float]]:
    """Seconds per round: a round-level drift of ``noise`` (log-normal) and a little sample jitter."""
    out = []
    for _ in range(rounds):
        level = ms * float(np.exp(rng.normal(0, noise)))
        out.append((level * np.exp(rng.normal(0, 0.01, per_round)) / 1e3).tolist())
    return out


def _interval(rng: np.random.Generator, noise: float, rounds: int = 12):
    eager = [round_figure(r, 1, "latency") for r in _rounds(rng, 4.0, rounds, noise)]
    fast = [round_figure(r, 1, "latency") for r in _rounds(rng, 1.0, rounds, noise)]
    return ratio_interval(round_ratios(eager, fast, "latency"))


def test_interval_holds_a_known_ratio_and_widens_with_noise() -> None:
    rng = np.random.default_rng(0)
    quiet, noisy = _interval(rng, 0.01), _interval(rng, 0.10)
    assert quiet.low <= 4.0 <= quiet.high and quiet.value == pytest.approx(4.0, rel=0.02)
    assert noisy.low <= 4.0 <= noisy.high
    assert noisy.half_width > 3 * quiet.half_width
    assert quiet.level >= 0.95 and quiet.rounds == 12


def test_interval_covers_the_true_ratio_at_its_level() -> None:
    rng = np.random.default_rng(1)
    trials = 2000
    hits = 0
    for _ in range(trials):
        found = ratio_interval((4.0 * np.exp(rng.normal(0, 0.05, 10))).tolist())
        hits += found.low <= 4.0 <= found.high
    assert found.level >= 0.95
    assert hits / trials >= 0.94  # the sign-test interval's coverage, less sampling error


def test_interval_below_six_rounds_is_min_to_max_with_its_lower_level() -> None:
    found = ratio_interval([3.0, 4.0, 5.0])
    assert (found.low, found.value, found.high) == (3.0, 4.0, 5.0)
    assert found.level == pytest.approx(1 - 2 / 8)
    assert ratio_interval([2.0]).level == 0.0


def test_one_stalled_round_moves_the_interval_little() -> None:
    steady = [4.0, 4.02, 3.98, 4.01, 3.99, 4.03, 3.97, 4.0, 4.01, 3.99]
    hit = [*steady[:-1], 0.4]  # eager stalled for a whole round: a 10x lower ratio
    a, b = ratio_interval(steady), ratio_interval(hit)
    assert b.value == pytest.approx(a.value, rel=0.01)
    assert b.high == pytest.approx(a.high, rel=0.01) and b.low >= 3.9


def test_throughput_ratio_is_cell_over_eager() -> None:
    eager = [round_figure([0.01] * 4, 8, "throughput")]
    cell_ = [round_figure([0.0025] * 4, 8, "throughput")]
    assert eager == [pytest.approx(800.0)]
    assert round_ratios(eager, cell_, "throughput") == [pytest.approx(4.0)]


def test_stalls_are_counted_over_five_medians() -> None:
    seconds = [0.010] * 97 + [0.051, 0.2, 0.049]  # 0.049 is under 5x the median
    found = stalls(seconds)
    assert (found.count, found.share, found.worst_ms) == (2, pytest.approx(0.02), pytest.approx(200.0))
    assert found.threshold_ms == pytest.approx(50.0)
    assert stalls([0.01] * 10).count == 0 and stalls([0.01] * 10).worst_ms is None


def test_stalls_above_their_share_are_flagged_and_the_p50_kept() -> None:
    stalled = cell("onnxruntime-fp32", 1, 1.0, stalls=stalls([0.001] * 95 + [0.05] * 5), speedup_vs_eager=None)
    quiet = cell("openvino-fp32", 1, 1.0, stalls=stalls([0.001] * 100), speedup_vs_eager=None)
    out = enrich([cell("eager-fp32", 1, 2.0), stalled, quiet], {}, {}, None, 0.1)
    assert any(f.startswith("stalls: 5 of 50 samples") for f in out[1].flags)
    assert not any(f.startswith("stalls") for f in out[2].flags)
    assert isinstance(out[1], MeasuredCell) and out[1].latency.p50_ms == 1.0


SETTINGS = BenchSettings(rounds=6, max_rounds=12, ci_target=0.025).resolve(physical_cores=2)


def test_every_cell_runs_the_first_rounds() -> None:
    figures = {"eager-fp32": [4.0] * 3, "onnxruntime-fp32": [1.0] * 3, "openvino-fp32": [1.0, 2.0, 1.0]}
    assert continuing(figures, 3, SETTINGS) == list(figures)


def test_only_wide_cells_continue_with_eager() -> None:
    eager = [4.0, 4.1, 3.9, 4.0, 4.05, 3.95]
    figures = {"eager-fp32": eager, "onnxruntime-fp32": [1.0] * 6, "openvino-fp32": [1.0, 1.3, 0.8, 1.1, 0.9, 1.2]}
    assert continuing(figures, 6, SETTINGS) == ["eager-fp32", "openvino-fp32"]
    tight = {k: v for k, v in figures.items() if k != "openvino-fp32"}
    assert continuing(tight, 6, SETTINGS) == []


def test_rounds_stop_at_the_cap_or_without_eager() -> None:
    wide = {"eager-fp32": [4.0, 5.0] * 6, "onnxruntime-fp32": [1.0, 1.5] * 6}
    assert continuing(wide, 12, SETTINGS) == []
    assert continuing({"onnxruntime-fp32": [1.0, 2.0] * 4}, 8, SETTINGS) == []


def test_the_time_budget_ends_the_adaptive_rounds_but_never_the_first() -> None:
    budget = SETTINGS.model_copy(update={"max_seconds": 30.0})
    wide = {"eager-fp32": [4.0, 5.0] * 4, "onnxruntime-fp32": [1.0, 1.5] * 4}
    assert continuing(wide, 8, budget, spent=29.0) == ["eager-fp32", "onnxruntime-fp32"]
    assert continuing(wide, 8, budget, spent=30.0) == []
    first = {k: v[:3] for k, v in wide.items()}
    assert continuing(first, 3, budget, spent=300.0) == list(first)
    assert continuing(wide, 8, SETTINGS, spent=1e6) == ["eager-fp32", "onnxruntime-fp32"]


# A worker speaking the harness's protocol with the timings its artifact's name asks for:
# "<ms>-<noise>" answers 20 samples a round at ms milliseconds, each round drifting by noise
# (log-normal, seeded by the name, so every run draws the same rounds). It tests the harness's rounds, not any runtime.
SCRIPTED = textwrap.dedent(
    """
    import json, math, random, sys, os
    spec = json.loads(sys.stdin.readline())
    ms, noise = (float(v) for v in os.path.basename(spec["artifact"]).split("-"))
    rng = random.Random(os.path.basename(spec["artifact"]))
    def answer(msg):
        sys.stdout.write(json.dumps(msg) + "\\n"); sys.stdout.flush()
    answer({"event": "ready", "load_s": 0, "import_s": 0, "first_ms": ms, "rss_before_load_bytes": 0, "info": {},
            "threading": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "openmp_libraries": ["libgomp.so.1"]}})
    for line in sys.stdin:
        if json.loads(line)["cmd"] == "stop":
            answer({"event": "done", "peak_rss_bytes": 1}); break
        level = ms * math.exp(rng.gauss(0, noise))
        answer({"event": "round", "seconds": [level / 1e3] * 20, "warmup_iters": 1})
    """
)


def test_harness_adds_rounds_only_where_the_interval_is_wide(tmp_path: Path) -> None:
    script = tmp_path / "scripted.py"
    script.write_text(SCRIPTED)
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", tmp_path / "4.0-0.001"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", tmp_path / "1.0-0.001"),
        CellPlan("openvino", "fp32", "openvino-fp32", tmp_path / "2.0-0.2"),
    ]
    settings = SETTINGS.model_copy(update={"min_seconds": 0.01, "min_iters": 1, "threads": 1})
    cells = {c.key: c for c in run_cells(plans, settings, launch=Launch((sys.executable, str(script))))}
    eager, tight, wide = cells["eager-fp32"], cells["onnxruntime-fp32"], cells["openvino-fp32"]
    assert isinstance(eager, MeasuredCell) and isinstance(tight, MeasuredCell) and isinstance(wide, MeasuredCell)
    assert (eager.rounds, tight.rounds, wide.rounds) == (12, 6, 12)
    assert tight.speedup_rounds is not None and len(tight.speedup_rounds) == 6
    assert tight.speedup_ci_low is not None and tight.speedup_ci_high is not None
    assert (
        tight.speedup_ci_low < 4.02
        and tight.speedup_ci_high > 3.98
        and tight.speedup_ci_high / tight.speedup_ci_low < 1.01
    )
    assert wide.speedup_ci_level is not None and wide.speedup_ci_level >= 0.95
    assert tight.threading is not None and tight.threading.env == {"OMP_WAIT_POLICY": "PASSIVE"}
    flagged = enrich(list(cells.values()), {}, {}, None, 0.1, settings.ci_target)
    assert any(f.startswith("wide interval") for f in flagged[2].flags)
    assert not any(f.startswith("wide interval") for f in flagged[1].flags)

    # A spent budget stops the adaptive rounds: the wide cell gets the first six and no more.
    spent = settings.model_copy(update={"max_seconds": 1e-6})
    cells = {c.key: c for c in run_cells(plans, spent, launch=Launch((sys.executable, str(script))))}
    assert {c.rounds for c in cells.values() if isinstance(c, MeasuredCell)} == {6}


def test_a_stolen_round_is_dropped_until_max_rounds_were() -> None:
    steal = SETTINGS.model_copy(update={"max_round_steal": 0.1})
    assert too_stolen(0.2, 0, steal) and not too_stolen(0.1, 0, steal) and not too_stolen(None, 0, steal)
    assert not too_stolen(0.2, steal.max_rounds, steal)  # a VM stolen from all the time still ends
    assert not too_stolen(0.9, 0, SETTINGS)  # no threshold: every round counts


def _scripted_steal(monkeypatch: pytest.MonkeyPatch, shares: list[float]) -> list[float]:
    """The harness reads these steal shares for its rounds, in order (then the last forever)."""
    import kiln.bench.harness as harness

    seen: list[float] = []

    def fake(_before: object, _after: object) -> float:
        seen.append(shares[min(len(seen), len(shares) - 1)])
        return seen[-1]

    monkeypatch.setattr(harness, "steal_between", fake)
    return seen


def test_harness_drops_and_retimes_the_rounds_the_hypervisor_stole(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "scripted.py"
    script.write_text(SCRIPTED)
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", tmp_path / "4.0-0.001"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", tmp_path / "1.0-0.001"),
    ]
    base = SETTINGS.model_copy(update={"min_seconds": 0.01, "min_iters": 1, "threads": 1})
    launch = Launch((sys.executable, str(script)))

    # Without a threshold every round counts, and each cell records the steal of its rounds.
    _scripted_steal(monkeypatch, [0.01, 0.3, 0.02])
    cells = {c.key: c for c in run_cells(plans, base, launch=launch)}
    fast = cells["onnxruntime-fp32"]
    assert isinstance(fast, MeasuredCell) and fast.rounds == 6 and fast.rounds_dropped is None
    assert fast.round_steal == [0.01, 0.3, 0.02, 0.02, 0.02, 0.02]

    # With one, the stolen rounds are timed again: the same six kept rounds, two dropped.
    steal = base.model_copy(update={"max_round_steal": 0.1})
    seen = _scripted_steal(monkeypatch, [0.01, 0.3, 0.02, 0.25, 0.02])
    cells = {c.key: c for c in run_cells(plans, steal, launch=launch)}
    eager, fast = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert isinstance(eager, MeasuredCell) and isinstance(fast, MeasuredCell)
    assert len(seen) == 8 and (eager.rounds, fast.rounds) == (6, 6)
    assert fast.rounds_dropped == eager.rounds_dropped == 2
    assert fast.round_steal == [0.01, 0.02, 0.02, 0.02, 0.02, 0.02]
    assert fast.speedup_rounds is not None and len(fast.speedup_rounds) == 6
    assert fast.warmup_iters == 8  # the dropped rounds' warm-ups happened all the same
    results = synthetic_results()
    results.settings = results.settings.model_copy(update={"max_round_steal": 0.1})
    results.cells = [eager, fast]
    assert "over 10% (steal) was timed again (4 cell-rounds dropped)" in fmt.adaptive(results)

    # Stolen from all the time: max_rounds rounds are dropped, then the rounds count.
    _scripted_steal(monkeypatch, [0.5])
    cells = {c.key: c for c in run_cells(plans, steal, launch=launch)}
    fast = cells["onnxruntime-fp32"]
    assert isinstance(fast, MeasuredCell) and fast.rounds == 6 and fast.rounds_dropped == steal.max_rounds


def _with_interval():
    results = synthetic_results()
    results.cells[1] = results.cells[1].model_copy(
        update={"speedup_vs_eager": 4.1, "speedup_ci_low": 3.9, "speedup_ci_high": 4.3, "rounds": 8}
    )
    return results


def test_reports_show_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    results = _with_interval()
    assert fmt.speedup(results.cells[1]) == "4.10× [3.90–4.30]"
    assert fmt.speedup(results.cells[0]) == "1.00×"  # eager: no interval
    assert "4.10× [3.90–4.30]" in render_markdown(results)
    html = render_html(results)
    assert "4.10× [3.90–4.30]" in html and 'class="interval"' in html
    print_results(results)
    assert "4.10× [3.90–4.30]" in capsys.readouterr().out


def test_results_round_trip_the_interval_fields() -> None:
    results = _with_interval()
    doc = json.loads(json.dumps(results.to_json()))
    assert doc["schema"] == "kiln.results/2"
    assert doc["cells"][1]["speedup_ci_low"] == 3.9 and doc["cells"][1]["rounds"] == 8
    assert doc["settings"]["max_rounds"] == 18 and doc["settings"]["ci_target"] == 0.025


# A worker that logs each start to starts.log beside its artifact, echoes the warm-up count it
# was asked for, and reports its start number as its peak RSS: what the harness's processes see.
LIVES = textwrap.dedent(
    """
    import json, sys, os
    spec = json.loads(sys.stdin.readline())
    log = os.path.join(os.path.dirname(spec["artifact"]), "starts.log")
    with open(log, "a") as f:
        f.write(os.path.basename(spec["artifact"]) + "\\n")
    with open(log) as f:
        start = sum(1 for _ in f)
    def answer(msg):
        sys.stdout.write(json.dumps(msg) + "\\n"); sys.stdout.flush()
    answer({"event": "ready", "load_s": start, "import_s": 0, "first_ms": 1, "rss_before_load_bytes": 0, "info": {}})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stop":
            answer({"event": "done", "peak_rss_bytes": start}); break
        answer({"event": "round", "seconds": [0.001] * 20, "warmup_iters": cmd["warmup_iters"]})
    """
)


def test_processes_spread_each_cells_rounds_over_fresh_workers(tmp_path: Path) -> None:
    script = tmp_path / "lives.py"
    script.write_text(LIVES)
    plans = [
        CellPlan("eager", "fp32", "eager-fp32", tmp_path / "eager"),
        CellPlan("onnxruntime", "fp32", "onnxruntime-fp32", tmp_path / "ort"),
    ]
    base = SETTINGS.model_copy(update={"min_seconds": 0.01, "min_iters": 1, "threads": 1, "warmup_iters": 5})
    launch = Launch((sys.executable, str(script)))
    starts = tmp_path / "starts.log"

    cells = {c.key: c for c in run_cells(plans, base, launch=launch)}
    assert starts.read_text().split() == ["eager", "ort"]  # one process per cell by default
    one = cells["onnxruntime-fp32"]
    assert isinstance(one, MeasuredCell) and one.processes == 1 and one.warmup_iters == 5 + 5 * 1

    starts.unlink()
    three = base.model_copy(update={"processes": 3})  # 6 rounds: a fresh process every 2
    cells = {c.key: c for c in run_cells(plans, three, launch=launch)}
    assert starts.read_text().split() == ["eager", "ort"] * 3  # renewed together, one after the other
    eager, ort = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert isinstance(eager, MeasuredCell) and isinstance(ort, MeasuredCell)
    assert (eager.rounds, ort.rounds, eager.processes, ort.processes) == (6, 6, 3, 3)
    assert ort.speedup_rounds is not None and len(ort.speedup_rounds) == 6
    assert ort.warmup_iters == 3 * (5 + 1)  # each fresh process warms up in full, then 1 a round
    assert ort.peak_rss_bytes == 6 and ort.load_s == 2  # the highest peak; the first process's load
    results = synthetic_results()
    results.settings = three
    assert "spread over 3 fresh worker processes (one every 2 rounds)" in fmt.adaptive(results)

    # A worker that cannot start again makes an error cell; the run goes on.
    starts.unlink()
    dies = 'os.path.basename(spec["artifact"]) == "ort" and start > 2 and sys.exit(3)\n'
    script.write_text(LIVES.replace('answer({"event": "ready"', dies + 'answer({"event": "ready"'))
    cells = {c.key: c for c in run_cells(plans, three, launch=launch)}
    eager, ort = cells["eager-fp32"], cells["onnxruntime-fp32"]
    assert ort.status == "error" and "exited with status 3" in ort.reason
    assert isinstance(eager, MeasuredCell) and (eager.rounds, eager.processes) == (6, 3)
