"""``kiln tune``: the search space from the registry, the Pareto front, pruning, rejection by the
build's own gate, and a written config that ``kiln build`` reproduces exactly."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kiln.capture.sources import source_kind
from kiln.config import TargetConfig, load_config, parse_config
from kiln.errors import UnknownTargetError
from kiln.targets import availability, target_options
from kiln.tune import pareto, search, session
from kiln.tune.output import page, to_toml, write_config
from kiln.tune.records import Candidate, Measurement
from kiln.tune.space import enumerate_space, option_variants
from tests.conftest import CNN
from tests.conftest import write_config as write_toml

FAST_BENCH = {"threads": 1, "min_seconds": 0.05, "min_iters": 3, "warmup_seconds": 0.0, "warmup_iters": 1, "rounds": 1}


def _cand(cid: str, p50: float | None, drop: float | None = 0.0, size: int = 100, **extra: Any) -> Candidate:
    target, precision = cid.split("-")[:2]
    measured = (
        [Measurement(run="r", p50_ms=p50, p90_ms=p50, cv=0.01, throughput=1e3 / p50, unstable=False)] if p50 else []
    )
    return Candidate(
        id=cid,
        artifact=cid,
        target=target,
        precision=precision,
        threads=1,
        stage="float",
        status=extra.pop("status", "measured" if p50 is not None else "rejected"),
        metric_drop=drop,
        size_bytes=size,
        measurements=measured,
        **extra,
    )


# ---- the search space ----


def test_option_variants_change_one_setting_each_and_validate() -> None:
    base = TargetConfig(name="onnxruntime", precision="int8", options={"calibration_method": "entropy"})
    variants = option_variants(base)
    assert [v.id for v in variants] == [
        "onnxruntime-int8.calibration_method-percentile",
        "onnxruntime-int8.per_channel-false",
    ]
    for v in variants:
        target_options(v.target)  # the target's own model accepts it
        changed = {k for k in v.target.options if v.target.options[k] != base.options.get(k)}
        assert len(changed) == 1
    assert variants[1].target.options == {"calibration_method": "entropy", "per_channel": False}


def test_space_skips_what_needs_data_or_hardware_and_says_why(tmp_path: Path) -> None:
    config = parse_config({"model": CNN["model"]}, tmp_path)  # no [calibration]
    kept, skipped = enumerate_space(config, source_kind(config.model.source))
    reasons = {(s.target, s.precision): s.reason for s in skipped}
    pairs = {(v.target.name, v.target.precision) for v in kept}
    assert kept[0].id == "eager-fp32"
    assert "[calibration]" in reasons[("onnxruntime", "int8")]
    assert ("onnxruntime", "int8-dynamic") in pairs  # dynamic quantization needs no data
    for name in ("tensorrt", "coreml"):
        if not availability(name).run:
            assert all(reasons[(name, p.name)].startswith("cannot") for p in implementation_rows(name))
    assert pairs.isdisjoint(reasons)


def implementation_rows(name: str) -> list[Any]:
    from kiln.targets import REGISTRY

    return list(REGISTRY[name].precisions)


def test_space_keeps_only_the_selected_targets(tmp_path: Path) -> None:
    config = parse_config(CNN, tmp_path)
    kept, _ = enumerate_space(config, source_kind(config.model.source), ("onnxruntime:int8",))
    assert [v.id for v in kept] == ["eager-fp32", "onnxruntime-fp32", "onnxruntime-int8"]
    with pytest.raises(UnknownTargetError, match="did you mean"):
        enumerate_space(config, "python", ("onnxruntim",))


# ---- the front ----


def test_front_keeps_what_nothing_dominates_and_the_fastest_wins() -> None:
    cands = [
        _cand("a-int8", 1.0, drop=0.01),
        _cand("b-fp32", 2.0, drop=0.0),
        _cand("c-fp16", 2.5, drop=0.0, size=200),  # slower, as accurate, larger than b: dominated
        _cand("d-int4", 0.5, drop=0.02, size=50),
        _cand("e-int8", None, status="rejected", reason="metric top1 drop 0.2 > 0.01"),
        _cand("f-fp32", 2.0, drop=0.0),  # the same figures as b: neither dominates the other
    ]
    front = pareto.front(cands, "latency")
    assert [c.id for c in front] == ["d-int4", "a-int8", "b-fp32", "f-fp32"]
    best = pareto.mark(cands, "latency")
    assert best is not None and best.id == "d-int4" and best.winner
    assert not cands[2].front and not cands[4].front
    # Throughput: the highest items/s wins (here the same order, 1e3 / p50).
    assert pareto.winner(cands, "throughput").id == "d-int4"  # type: ignore[union-attr]


def test_within_compares_costs_by_the_objective() -> None:
    assert pareto.within(1.4, 1.0, 1.5, "latency") and not pareto.within(1.6, 1.0, 1.5, "latency")
    assert pareto.within(-70.0, -100.0, 1.5, "throughput") and not pareto.within(-60.0, -100.0, 1.5, "throughput")


# ---- pruning, with builds and runs replaced by figures ----


def _fake_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: dict[str, float], rejected: set[str]):
    config = parse_config(CNN, tmp_path)
    settings = session.TuneSettings(out=tmp_path / "build")
    s = session.Session(config, settings, None, 1, 1, lambda _: None)  # type: ignore[arg-type]
    built: list[str] = []

    def build_one(sess: Any, variant: Any) -> Candidate:
        cand = session.register(sess, variant)
        built.append(variant.id)
        cand.status = "rejected" if variant.id in rejected else "measured"
        cand.reason = "metric breached" if variant.id in rejected else None
        return cand

    def measure(sess: Any, stage: str, artifacts: list[str], threads: int, requests: int) -> bool:
        for a in [*artifacts, "eager-fp32"]:
            cand = sess.artifacts.get(a)
            if cand is not None and cand.status == "measured":
                cand.measurements.append(
                    Measurement(
                        run=stage, p50_ms=figures.get(a, 0.3), p90_ms=0.3, cv=0.0, throughput=1.0, unstable=False
                    )
                )
        return True

    monkeypatch.setattr(search, "build_one", build_one)
    monkeypatch.setattr(search, "measure", measure)
    return s, built


def test_search_prunes_targets_whose_fp32_is_dominated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.tune.space import Variant

    variants = [
        Variant(TargetConfig(name="eager"), "float"),
        Variant(TargetConfig(name="onnxruntime"), "float"),
        Variant(TargetConfig(name="openvino"), "float"),
        Variant(TargetConfig(name="onnxruntime", precision="int8"), "precisions"),
        Variant(TargetConfig(name="openvino", precision="int8"), "precisions"),
    ]
    figures = {"eager-fp32": 5.0, "onnxruntime-fp32": 1.0, "openvino-fp32": 3.0, "onnxruntime-int8": 0.4}
    s, built = _fake_session(tmp_path, monkeypatch, figures, rejected={"onnxruntime-int8"})
    search._stage_float(s, variants)
    search._stage_precisions(s, variants)
    pruned = {c.artifact: c.reason for c in s.candidates if c.status == "pruned"}
    assert "openvino-int8" in pruned and "dominated" in (pruned["openvino-int8"] or "")
    assert "onnxruntime-int8" in built
    # A rejected quantizer's settings are still searched: another calibration may pass the gate.
    search._stage_options(s)
    assert "onnxruntime-int8.calibration_method-entropy" in built


def test_a_candidate_built_but_never_timed_is_not_tried_not_measured() -> None:
    from kiln.tune.records import Candidate, Measurement

    def cand(artifact: str, timed: bool) -> Candidate:
        runs = [Measurement(run="01-float-t2", p50_ms=1.0, p90_ms=1.1, cv=0.1, throughput=1e3, unstable=False)]
        return Candidate(
            id=f"{artifact}@t2", artifact=artifact, target="openvino", precision="int8", options={}, threads=2,
            requests=1, stage="options", status="measured", measurements=runs if timed else [],
        )  # fmt: skip

    timed, late = cand("openvino-int8", True), cand("openvino-int8.preset-mixed", False)
    search._unmeasured([timed, late])
    assert timed.status == "measured"
    assert late.status == "not tried" and "budget ran out before it was measured" in (late.reason or "")


# ---- reports and the written config ----


def test_toml_writer_round_trips_a_config() -> None:
    data = {
        "model": {
            "name": "m",
            "inputs": [{"name": "x", "shape": ["batch", 3]}],
            "dims": {"batch": {"min": 1, "max": 8}},
        },
        "target": [{"name": "onnxruntime", "precision": "int8", "options": {"per_channel": False, "percentile": 99.9}}],
        "gates": {"max_metric_drop": 1e-05},
    }
    assert tomllib.loads(to_toml(data, "a header\nover two lines")) == data


def test_tune_html_plots_the_front(tmp_path: Path) -> None:
    from kiln.report.tune import render_tune_html
    from kiln.tune.records import TuneResults
    from tests.bench.synthetic import synthetic_results

    cands = [_cand("a-int8", 1.0, drop=0.01), _cand("b-fp32", 2.0), _cand("c-fp16", 2.5, size=200)]
    pareto.mark(cands, "latency")
    results = TuneResults(
        kiln_version="0",
        created="2026-01-01T00:00:00Z",
        model="m",
        config="kiln.toml",
        objective="latency",
        mode="latency",
        batch=1,
        max_metric_drop=0.01,
        budget_minutes=1,
        elapsed_s=1,
        budget_exhausted=False,
        fingerprint=synthetic_results().fingerprint,
        candidates=cands,
        winner="a-int8",
    )
    html = render_tune_html(page(results))
    assert 'data-plot="pareto-metric"' in html and 'data-plot="pareto-size"' in html
    assert 'class="point winner"' in html and 'class="point dominated"' in html and 'class="front"' in html
    assert json.loads(json.dumps(results.to_json()))["schema"] == "kiln.tune/1"


def test_cli_refuses_a_batch_outside_the_dim_before_building(tmp_path: Path) -> None:
    from kiln.cli import main

    path = write_toml(tmp_path, {**CNN, "bench": FAST_BENCH})
    run = CliRunner().invoke(main, ["tune", str(path), "--batch", "100", "--out", str(tmp_path / "b")])
    assert run.exit_code == 2, run.output
    assert "outside the model's 'batch' range 1..8" in run.output
    assert not (tmp_path / "b" / "cnn" / "tune" / "artifacts").exists()


# ---- real builds (slow) ----


@pytest.mark.slow
@pytest.mark.target("onnxruntime", stage="run")
def test_a_candidate_the_gate_breaches_is_rejected_with_its_reason(tmp_path: Path) -> None:
    strict = {"name": "onnxruntime", "tolerance": {"min_cosine": 1.01}}  # no artifact reaches it
    path = write_toml(tmp_path, {**CNN, "target": [strict], "bench": FAST_BENCH})
    settings = session.TuneSettings(targets=("onnxruntime:fp32",), threads=(1,), out=tmp_path / "build")
    results, folder = search.tune(path, settings)
    ort = results.get("onnxruntime-fp32@t1")
    assert ort is not None and ort.status == "rejected" and "cosine" in (ort.reason or "")
    assert not ort.measurements
    assert results.winner == "eager-fp32@t1"  # nothing else passed
    assert (folder / "tune.json").is_file() and (folder / "tune.html").is_file()


@pytest.mark.slow
@pytest.mark.target("onnxruntime", stage="run")
def test_the_written_config_builds_the_winner_with_its_cache_key(tmp_path: Path) -> None:
    from kiln.manifest import Manifest
    from kiln.pipeline.build import build

    path = write_toml(tmp_path, {**CNN, "bench": FAST_BENCH, "gates": {"max_metric_drop": 0.5}})
    out = tmp_path / "build"
    # keep_within: every setting is searched, whatever a noisy machine says of the defaults.
    settings = session.TuneSettings(
        targets=("onnxruntime:int8",), threads=(1,), out=out, front_for_threads=1, keep_within=1e9
    )
    results, folder = search.tune(path, settings)
    ids = {c.artifact for c in results.candidates}
    assert {"onnxruntime-int8", "onnxruntime-int8.calibration_method-entropy"} <= ids
    config = load_config(path)
    variant = results.get("onnxruntime-int8.calibration_method-percentile@t1")
    assert variant is not None and variant.status == "measured"
    for chosen in {results.winner, variant.id}:
        picked = results.model_copy(update={"winner": chosen})
        tuned = tmp_path / "tuned" / "kiln.toml"
        assert write_config(config, picked, tuned, out)
        written = tomllib.loads(tuned.read_text())
        assert len(written["target"]) == 1 and written["bench"]["threads"] == 1
        fresh = build(load_config(tuned), tmp_path / f"fresh-{len(chosen)}")[0]
        assert fresh.manifest is not None and fresh.status == "built"
        winner = picked.get(chosen)
        assert winner is not None
        assert fresh.manifest.cache_key == winner.cache_key
        assert fresh.manifest.options == winner.options
        assert Manifest.read(folder / "artifacts" / winner.artifact).options == winner.options
