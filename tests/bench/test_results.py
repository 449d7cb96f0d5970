"""A real ``kiln bench`` run of a tiny model: results.json valid under the shipped schema,
the reports written, the figures coherent; and the analysis flags on synthetic cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kiln.bench.analysis import enrich
from kiln.cli import main
from kiln.errors import ConfigError
from kiln.report import schema, validate
from tests.bench.synthetic import synthetic_results


def test_schema_is_versioned_and_shipped() -> None:
    assert schema()["properties"]["schema"] == {"const": "kiln.results/1"}


def test_schema_rejects_an_ok_cell_without_latency() -> None:
    results = synthetic_results()
    del results["cells"][0]["latency"]
    with pytest.raises(ConfigError, match="cells/0"):
        validate(results)


@pytest.mark.slow
def test_bench_writes_valid_results_and_reports(tiny_results: tuple[dict[str, Any], Path]) -> None:
    results, folder = tiny_results
    on_disk = json.loads((folder / "results.json").read_text())
    validate(on_disk)
    assert on_disk["cells"] == json.loads(json.dumps(results["cells"]))
    assert (folder / "report.md").read_text().startswith("# kiln benchmark: tiny")
    assert "<svg" in (folder / "report.html").read_text()
    keys = [(c["key"], c["batch"]) for c in results["cells"]]
    assert keys == [("eager-fp32", 1), ("onnxruntime-fp32", 1), ("eager-fp32", 4), ("onnxruntime-fp32", 4)]
    for cell in results["cells"]:
        assert cell["status"] == "ok", cell["reason"]
        lat = cell["latency"]
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["samples"] >= 10 and cell["threads"] == 1 and cell["runtime"]["threads"] == 1
        assert cell["flops"] > 0 and cell["gflops"] > 0 and cell["size_bytes"] > 0
        assert cell["accuracy"]["metric"] == "top1" and cell["parity_passed"] is True
    flops = results["flops"]
    assert flops["4"] == 4 * flops["1"]  # FLOPs scale with the batch
    eager = [c for c in results["cells"] if c["key"] == "eager-fp32"]
    assert all(c["speedup_vs_eager"] == pytest.approx(1.0) for c in eager)


@pytest.mark.slow
def test_report_command_rerenders_from_results(tiny_results: tuple[dict[str, Any], Path]) -> None:
    _, folder = tiny_results
    (folder / "report.md").unlink()
    result = CliRunner().invoke(main, ["report", str(folder / "results.json"), "--no-html"])
    assert result.exit_code == 0, result.output
    assert "## Batch 4" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_compare_real_run_against_itself_exits_zero(tiny_results: tuple[dict[str, Any], Path]) -> None:
    _, folder = tiny_results
    path = str(folder / "results.json")
    assert CliRunner().invoke(main, ["compare", path, path]).exit_code == 0


def _raw(results: dict[str, Any]) -> list[dict[str, Any]]:
    cells = results["cells"]
    for cell in cells:
        for key in ("flags", "speedup_vs_eager", "gflops", "roofline_fraction"):
            cell.pop(key, None)
    return cells


def test_enrich_flags_compressed_artifact_slower_than_fp32_sibling() -> None:
    results = synthetic_results()
    slow_bf16 = json.loads(json.dumps(results["cells"][1]))
    slow_bf16.update(key="onnxruntime-bf16", precision="bf16")
    slow_bf16["latency"]["p50_ms"] = 1.5
    cells = [*_raw(results), slow_bf16]
    manifests = {c["key"]: {"execution": {"execution_precision": c["precision"]}, "size_bytes": 1} for c in cells}
    peak = {"measured": {"fp32_gflops": 100.0, "bf16_gflops": 200.0}}
    out = {c["key"]: c for c in enrich(cells, manifests, {c["key"]: {1: 10**6} for c in cells}, peak, 0.1)}
    assert any("wasted optimization" in f for f in out["onnxruntime-bf16"]["flags"])
    assert not out["onnxruntime-fp32"]["flags"]
    assert out["onnxruntime-fp32"]["speedup_vs_eager"] == pytest.approx(2.0)
    # 10^6 FLOPs x forward passes per second, over the bf16 peak for the bf16 cell
    passes = out["onnxruntime-bf16"]["latency"]["throughput"]
    assert out["onnxruntime-bf16"]["roofline_fraction"] == pytest.approx(passes * 1e6 / 1e9 / 200.0)


def test_enrich_flags_execution_precision_mismatch_and_instability() -> None:
    results = synthetic_results()
    cells = _raw(results)
    cells[1]["latency"].update(cv=0.4, unstable=True)
    manifests = {
        "eager-fp32": {"execution": {"execution_precision": "fp32"}},
        "onnxruntime-fp32": {"execution": {"execution_precision": "bf16"}},
    }
    out = {c["key"]: c for c in enrich(cells, manifests, {}, None, 0.1)}
    flags = out["onnxruntime-fp32"]["flags"]
    assert any("requested fp32, the runtime executes bf16" in f for f in flags)
    assert any(f.startswith("unstable: CV 40.0%") for f in flags)
    assert out["onnxruntime-fp32"]["gflops"] is None  # no FLOP count, no roofline figure
