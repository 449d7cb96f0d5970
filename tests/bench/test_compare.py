"""``kiln compare``: exit 0 on the same run, 4 on a regression, 2 on different hardware unless
allowed; deltas printed per cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kiln.cli import main
from kiln.report import validate
from kiln.report.compare import compare_results, parse_threshold
from tests.bench.synthetic import synthetic_results


def _write(path: Path, results: dict[str, Any]) -> Path:
    validate(results)  # the doctored files are still valid results
    path.write_text(json.dumps(results))
    return path


def _compare(tmp_path: Path, old: dict[str, Any], new: dict[str, Any], *flags: str) -> Any:
    a, b = _write(tmp_path / "old.json", old), _write(tmp_path / "new.json", new)
    return CliRunner().invoke(main, ["compare", str(a), str(b), *flags])


def _slower(results: dict[str, Any], key: str, factor: float) -> dict[str, Any]:
    for cell in results["cells"]:
        if cell["key"] == key:
            for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
                cell["latency"][name] *= factor
            cell["latency"]["throughput"] /= factor
    return results


def test_compare_same_run_exits_zero(tmp_path: Path) -> None:
    result = _compare(tmp_path, synthetic_results(), synthetic_results())
    assert result.exit_code == 0, result.output
    assert "onnxruntime-fp32@b1" in result.output and "p50 ms" in result.output


def test_compare_slower_copy_exits_four(tmp_path: Path) -> None:
    result = _compare(tmp_path, synthetic_results(), _slower(synthetic_results(), "onnxruntime-fp32", 1.25))
    assert result.exit_code == 4, result.output
    assert "onnxruntime-fp32@b1" in result.output and "regressed beyond 10%" in result.output


def test_compare_small_slowdown_within_threshold_passes(tmp_path: Path) -> None:
    new = _slower(synthetic_results(), "onnxruntime-fp32", 1.05)
    assert _compare(tmp_path, synthetic_results(), new).exit_code == 0
    assert _compare(tmp_path, synthetic_results(), new, "--max-regression", "2%").exit_code == 4


def test_compare_refuses_different_hardware_and_names_fields(tmp_path: Path) -> None:
    other = synthetic_results()
    other["fingerprint"].update(cpu="Other CPU", physical_cores=8)
    other["fingerprint"]["flags"]["avx512f"] = True
    result = _compare(tmp_path, synthetic_results(), other)
    assert result.exit_code == 2, result.output
    assert "different hardware" in result.output
    for field in ("cpu", "physical_cores", "flags (avx512f)"):
        assert field in result.output


def test_compare_allows_different_hardware_when_asked(tmp_path: Path) -> None:
    other = synthetic_results()
    other["fingerprint"]["cpu"] = "Other CPU"
    assert _compare(tmp_path, synthetic_results(), other, "--allow-different-hardware").exit_code == 0
    slower = _slower(other, "eager-fp32", 2.0)
    assert _compare(tmp_path, synthetic_results(), slower, "--allow-different-hardware").exit_code == 4


def test_compare_accuracy_drop_beyond_gate_exits_four(tmp_path: Path) -> None:
    new = synthetic_results()
    new["cells"][1]["accuracy"].update(value=0.93, drop=0.02)
    result = _compare(tmp_path, synthetic_results(), new)
    assert result.exit_code == 4, result.output
    assert "accuracy" in result.output


def test_compare_memory_and_size_growth_regress() -> None:
    new = synthetic_results()
    new["cells"][1]["peak_rss_bytes"] *= 2
    comparison = compare_results(synthetic_results(), new, 0.1, False)
    assert [(d.cell, d.metric) for d in comparison.regressions] == [("onnxruntime-fp32@b1", "peak RSS")]


def test_compare_error_cell_that_ran_before_regresses() -> None:
    new = synthetic_results()
    new["cells"][1] = {**new["cells"][1], "status": "error", "reason": "worker was killed by SIGSEGV"}
    assert compare_results(synthetic_results(), new, 0.1, False).regressions


def test_compare_rejects_a_file_that_is_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    result = CliRunner().invoke(main, ["compare", str(bad), str(bad)])
    assert result.exit_code == 2 and "not a valid kiln results file" in result.output


@pytest.mark.parametrize(("text", "value"), [("10%", 0.10), ("0.05", 0.05), ("0%", 0.0)])
def test_parse_threshold(text: str, value: float) -> None:
    assert parse_threshold(text) == pytest.approx(value)


def test_parse_threshold_rejects_garbage(tmp_path: Path) -> None:
    result = _compare(tmp_path, synthetic_results(), synthetic_results(), "--max-regression", "lots")
    assert result.exit_code == 2 and "--max-regression" in result.output
