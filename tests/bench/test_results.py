"""results.json: the models, the generated schema, the committed suite results still loading and
re-rendering; a real ``kiln bench`` run of a tiny model; and the analysis flags on synthetic cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from kiln.bench.analysis import enrich
from kiln.cli import main
from kiln.errors import ConfigError
from kiln.report import load_results, parse_results, results_in, schema
from kiln.report.console import print_results
from kiln.report.markdown import render_markdown
from kiln.results import FailedCell, MeasuredCell, MeasuredPeak, Peak, Results, TheoreticalPeak
from tests.bench.synthetic import cell, latency, manifest, synthetic_results

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
COMMITTED = [path for machine in sorted(RESULTS_DIR.iterdir()) if machine.is_dir() for path in results_in(machine)]
FLEETS = sorted(RESULTS_DIR.glob("*/fleet/results.json"))


def test_schema_file_is_generated_from_the_models() -> None:
    assert schema.SCHEMA_FILE.read_text() == schema.render(), "run python -m kiln.report.schema"
    assert "kiln.results/2" in schema.shipped_schema()["properties"]["schema"]["enum"]


def test_schema_check_fails_when_the_file_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "results.schema.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(schema, "SCHEMA_FILE", stale)
    assert schema.main(["--check"]) == 1
    assert schema.main([]) == 0 and schema.main(["--check"]) == 0


def test_ok_cell_without_latency_is_rejected_by_models_and_schema() -> None:
    doc = synthetic_results().to_json()
    jsonschema.validate(doc, schema.results_schema())
    del doc["cells"][0]["latency"]
    with pytest.raises(ConfigError, match="cells/0"):
        parse_results(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema.results_schema())


def test_results_of_another_schema_version_are_rejected() -> None:
    doc = {**synthetic_results().to_json(), "schema": "kiln.results/0"}
    with pytest.raises(ConfigError, match="not a valid kiln results file at schema"):
        parse_results(doc)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_results_load_unchanged_and_validate(path: Path) -> None:
    raw = json.loads(path.read_text())
    results = load_results(path)
    assert results.to_json() == raw  # same keys, same nesting, same values
    jsonschema.validate(raw, schema.results_schema())


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_results_rerender_and_compare(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "results.json"
    shutil.copyfile(path, copy)
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    model = json.loads(path.read_text())["model"]  # a folder may hold a second run of a model
    assert (tmp_path / "report.md").read_text().startswith(f"# kiln benchmark: {model}")
    assert "<svg" in (tmp_path / "report.html").read_text()
    assert CliRunner().invoke(main, ["compare", str(path), str(copy)]).exit_code == 0


def test_every_committed_results_file_is_either_benchmark_or_fleet_results() -> None:
    every = sorted(RESULTS_DIR.glob("*/*/results.json"))
    assert every and sorted(COMMITTED + FLEETS) == every


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.parents[1].name)
def test_committed_fleet_results_load_unchanged_and_rerender(path: Path) -> None:
    from kiln.fleet.report import load_fleet, render_markdown

    raw = json.loads(path.read_text())
    fleet = load_fleet(path)
    assert fleet.model_dump(mode="json", by_alias=True) == raw
    page = render_markdown(fleet)
    assert page.startswith("# kiln fleet") and all(f"## {run.model}" in page for run in fleet.runs)


def test_a_suite_folder_lists_benchmark_results_only(tmp_path: Path) -> None:
    docs = (
        ("a", synthetic_results().to_json()),
        ("fleet", {"schema": "kiln.fleet/1"}),
        ("b", []),
        ("d", {"cells": []}),
    )
    for name, doc in docs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{not json")
    assert results_in(tmp_path) == [tmp_path / "a" / "results.json", tmp_path / "d" / "results.json"]


def test_committed_results_of_one_machine_compare_with_each_other() -> None:
    if len(COMMITTED) < 2:
        pytest.skip("needs two committed results files")
    result = CliRunner().invoke(main, ["compare", str(COMMITTED[0]), str(COMMITTED[1])])
    assert result.exit_code in (0, 4), result.output  # compared (figures may differ), not refused


def test_failed_cell_keeps_its_reason_and_has_no_timings() -> None:
    doc = synthetic_results().to_json()
    doc["cells"][1].update(status="skipped", reason="run: needs macOS")
    with pytest.raises(ConfigError):
        parse_results(doc)  # a skipped cell carries no timings
    for key in ("latency", "first_inference_ms", "load_s", "import_s", "warmup_iters", "peak_rss_bytes"):
        del doc["cells"][1][key]
    del doc["cells"][1]["rss_before_load_bytes"], doc["cells"][1]["runtime"]
    results = parse_results(doc)
    skipped = results.cells[1]
    assert isinstance(skipped, FailedCell) and skipped.reason == "run: needs macOS"
    assert "| onnxruntime-fp32 | fp32 | skipped: run: needs macOS |" in render_markdown(results)


def test_unknown_keys_are_rejected() -> None:
    doc = synthetic_results().to_json()
    doc["cells"][0]["p50"] = 1.0
    with pytest.raises(ConfigError, match="cells/0/ok/p50"):
        parse_results(doc)


def test_console_table_shows_failed_cells_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    results = synthetic_results()
    shared = results.cells[1].model_dump(include={"key", "target", "precision", "batch", "mode", "threads"})
    results.cells[1] = FailedCell(**shared, status="error", reason="worker was killed by SIGSEGV")
    results.cells[0].flags.append("wasted optimization: example")
    print_results(results)
    out = capsys.readouterr().out
    assert "worker was killed by SIGSEGV" in out and "wasted optimization: example" in out
    assert "test-cpu-2c-00000000" in out


@pytest.mark.slow
def test_bench_writes_valid_results_and_reports(tiny_results: tuple[Results, Path]) -> None:
    results, folder = tiny_results
    on_disk = json.loads((folder / "results.json").read_text())
    jsonschema.validate(on_disk, schema.results_schema())
    assert on_disk == results.to_json()
    assert (folder / "report.md").read_text().startswith("# kiln benchmark: tiny")
    assert "<svg" in (folder / "report.html").read_text()
    keys = [(c.key, c.batch) for c in results.cells]
    assert keys == [("eager-fp32", 1), ("onnxruntime-fp32", 1), ("eager-fp32", 4), ("onnxruntime-fp32", 4)]
    assert results.settings.batches == [1, 4] and results.settings.threads == 1 and results.settings.requests == 1
    for c in results.cells:
        assert isinstance(c, MeasuredCell), c.reason
        lat = c.latency
        assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
        assert lat.samples >= 10 and c.threads == 1 and c.runtime.threads == 1
        assert c.flops and c.flops > 0 and c.gflops and c.gflops > 0 and c.size_bytes and c.size_bytes > 0
        assert c.accuracy is not None and c.accuracy.metric == "top1" and c.parity_passed is True
    assert results.flops[4] == 4 * results.flops[1]  # FLOPs scale with the batch
    eager = [c for c in results.cells if c.key == "eager-fp32"]
    assert all(c.speedup_vs_eager == pytest.approx(1.0) for c in eager)


@pytest.mark.slow
def test_report_command_rerenders_from_results(tiny_results: tuple[Results, Path]) -> None:
    _, folder = tiny_results
    (folder / "report.md").unlink()
    result = CliRunner().invoke(main, ["report", str(folder / "results.json"), "--no-html"])
    assert result.exit_code == 0, result.output
    assert "## Batch 4" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_compare_real_run_against_itself_exits_zero(tiny_results: tuple[Results, Path]) -> None:
    _, folder = tiny_results
    path = str(folder / "results.json")
    assert CliRunner().invoke(main, ["compare", path, path]).exit_code == 0


def _raw(cells: list[MeasuredCell]) -> list[MeasuredCell | FailedCell]:
    """Cells as the harness returns them: no analysis figures yet."""
    figures = (
        "speedup_vs_eager",
        "gflops",
        "roofline_fraction",
        "size_bytes",
        "parity_passed",
        "parity_worst",
        "accuracy",
    )
    return [c.model_copy(update={"flags": [], **dict.fromkeys(figures)}) for c in cells]  # a list of its own each


def _by_key(cells: list[MeasuredCell | FailedCell]) -> dict[str, MeasuredCell]:
    out = {c.key: c for c in cells if isinstance(c, MeasuredCell)}
    assert len(out) == len(cells)
    return out


PEAK = Peak(measured=MeasuredPeak(fp32_gflops=100.0, bf16_gflops=200.0), theoretical=TheoreticalPeak())


def test_enrich_reads_size_quality_and_precision_from_manifests() -> None:
    cells = _raw([cell("eager-fp32", 1, 2.0), cell("onnxruntime-fp32", 1, 1.0)])
    manifests = {"eager-fp32": manifest("eager-fp32"), "onnxruntime-fp32": None}
    out = _by_key(enrich(cells, manifests, {}, None, 0.1))
    eager, ort = out["eager-fp32"], out["onnxruntime-fp32"]
    assert eager.size_bytes == 1234 and eager.parity_passed is True and eager.parity_worst == "max_abs 1e-06"
    assert eager.accuracy is not None and (eager.accuracy.value, eager.accuracy.max_drop) == (0.94, 0.02)
    assert ort.size_bytes is None and ort.parity_passed is None and ort.accuracy is None
    assert ort.speedup_vs_eager == pytest.approx(2.0) and eager.speedup_vs_eager == pytest.approx(1.0)


def test_enrich_flags_compressed_artifact_slower_than_fp32_sibling() -> None:
    cells = _raw(
        [
            cell("eager-fp32", 1, 2.0),
            cell("onnxruntime-fp32", 1, 1.0),
            cell("onnxruntime-bf16", 1, 1.5),
            cell("onnxruntime-fp32-channel30", 1, 1.2),
            cell("onnxruntime-int8", 1, 0.5),
        ]
    )
    manifests = {c.key: manifest(c.key, pruned=c.key.endswith("channel30")) for c in cells}
    out = _by_key(enrich(cells, manifests, {c.key: {1: 10**6} for c in cells}, PEAK, 0.1))
    for key in ("onnxruntime-bf16", "onnxruntime-fp32-channel30"):
        assert any(f.startswith(f"wasted optimization: {key} is slower than onnxruntime-fp32") for f in out[key].flags)
    assert not out["onnxruntime-fp32"].flags and not out["onnxruntime-int8"].flags
    # 10^6 FLOPs x forward passes per second, over the bf16 peak for the bf16 cell
    passes = out["onnxruntime-bf16"].latency.throughput
    assert out["onnxruntime-bf16"].roofline_fraction == pytest.approx(passes * 1e6 / 1e9 / 200.0)
    assert out["onnxruntime-int8"].roofline_fraction is None  # no int8 peak measured


def test_enrich_flags_execution_precision_mismatch_and_instability() -> None:
    noisy = cell("onnxruntime-fp32", 1, 1.0, latency=latency(1.0, cv=0.4, unstable=True))
    cells = _raw([cell("eager-fp32", 1, 2.0), noisy])
    manifests = {"eager-fp32": manifest("eager-fp32"), "onnxruntime-fp32": manifest("onnxruntime-fp32", "bf16")}
    out = _by_key(enrich(cells, manifests, {}, None, 0.1))
    flags = out["onnxruntime-fp32"].flags
    assert any("requested fp32, the runtime executes bf16" in f for f in flags)
    assert any(f.startswith("unstable: CV 40.0%") for f in flags)
    assert out["onnxruntime-fp32"].gflops is None  # no FLOP count, no roofline figure


def test_enrich_prefers_what_the_runtime_reported_over_the_build() -> None:
    ran_as = cell("openvino-fp32", 1, 1.0)
    ran_as.runtime.execution_precision = "bf16"
    cells = _raw([cell("eager-fp32", 1, 2.0), ran_as])
    out = _by_key(enrich(cells, {"openvino-fp32": manifest("openvino-fp32", "fp32")}, {}, None, 0.1))
    assert out["openvino-fp32"].execution_precision == "bf16"


def test_enrich_gives_no_speedup_without_an_eager_cell_that_ran() -> None:
    eager = FailedCell(
        key="eager-fp32",
        target="eager",
        precision="fp32",
        batch=1,
        mode="latency",
        threads=2,
        status="error",
        reason="x",
    )
    cells: list[Any] = [eager, *_raw([cell("onnxruntime-fp32", 1, 1.0)])]
    out = enrich(cells, {}, {}, None, 0.1)
    assert out[1].speedup_vs_eager is None and out[0].flags == []
