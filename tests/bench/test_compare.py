"""``kiln compare``: exit 0 on the same run, 4 on a regression, 2 on different hardware unless
allowed; deltas printed per cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kiln.cli import main
from kiln.report import parse_results
from kiln.report.compare import compare_results, parse_threshold
from kiln.results import FailedCell, MeasuredCell, Results
from tests.bench.synthetic import latency, synthetic_results


def _write(path: Path, results: Results) -> Path:
    path.write_text(json.dumps(parse_results(results.to_json()).to_json()))  # still valid results
    return path


def _compare(tmp_path: Path, old: Results, new: Results, *flags: str) -> Any:
    a, b = _write(tmp_path / "old.json", old), _write(tmp_path / "new.json", new)
    return CliRunner().invoke(main, ["compare", str(a), str(b), *flags])


def _measured(results: Results, index: int) -> MeasuredCell:
    cell = results.cells[index]
    assert isinstance(cell, MeasuredCell)
    return cell


def _slower(results: Results, key: str, factor: float) -> Results:
    for cell in results.cells:
        if cell.key == key and isinstance(cell, MeasuredCell):
            cell.latency = latency(cell.latency.p50_ms * factor, cell.batch)
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
    other.fingerprint.cpu, other.fingerprint.physical_cores = "Other CPU", 8
    other.fingerprint.flags["avx512f"] = True
    result = _compare(tmp_path, synthetic_results(), other)
    assert result.exit_code == 2, result.output
    assert "different hardware" in result.output
    for field in ("cpu", "physical_cores", "flags (avx512f)"):
        assert field in result.output


def test_compare_allows_different_hardware_when_asked(tmp_path: Path) -> None:
    other = synthetic_results()
    other.fingerprint.cpu = "Other CPU"
    assert _compare(tmp_path, synthetic_results(), other, "--allow-different-hardware").exit_code == 0
    slower = _slower(other, "eager-fp32", 2.0)
    assert _compare(tmp_path, synthetic_results(), slower, "--allow-different-hardware").exit_code == 4


def test_compare_portable_only_gates_size_and_accuracy_not_speed(tmp_path: Path) -> None:
    other = synthetic_results()
    other.fingerprint.cpu = "Other CPU"
    slower = _slower(other, "eager-fp32", 2.0)
    args = ("--allow-different-hardware", "--portable-only")
    result = _compare(tmp_path, synthetic_results(), slower, *args)
    assert result.exit_code == 0, result.output
    assert "--portable-only" in result.output
    _measured(slower, 1).size_bytes *= 2
    assert _compare(tmp_path, synthetic_results(), slower, *args).exit_code == 4


def test_compare_accuracy_drop_beyond_gate_exits_four(tmp_path: Path) -> None:
    new = synthetic_results()
    accuracy = _measured(new, 1).accuracy
    assert accuracy is not None
    accuracy.value, accuracy.drop = 0.93, 0.02
    result = _compare(tmp_path, synthetic_results(), new)
    assert result.exit_code == 4, result.output
    assert "accuracy" in result.output


def test_compare_memory_and_size_growth_regress() -> None:
    new = synthetic_results()
    _measured(new, 1).peak_rss_bytes *= 2
    comparison = compare_results(synthetic_results(), new, 0.1, False)
    assert [(d.cell, d.metric) for d in comparison.regressions] == [("onnxruntime-fp32@b1", "peak RSS")]


def test_compare_error_cell_that_ran_before_regresses() -> None:
    new = synthetic_results()
    shared = new.cells[1].model_dump(include={"key", "target", "precision", "batch", "mode", "threads"})
    new.cells[1] = FailedCell(**shared, status="error", reason="worker was killed by SIGSEGV")
    regressions = compare_results(synthetic_results(), new, 0.1, False).regressions
    assert [(d.cell, d.metric) for d in regressions] == [("onnxruntime-fp32@b1", "status (now error)")]


def test_compare_new_and_unmatched_cells_are_notes_not_regressions() -> None:
    new = synthetic_results()
    new.cells[1].key = "openvino-fp32"
    comparison = compare_results(synthetic_results(), new, 0.1, False)
    assert not comparison.regressions
    assert "openvino-fp32@b1: new cell, nothing to compare" in comparison.notes


def test_compare_notes_toolchain_changes() -> None:
    new = synthetic_results()
    new.fingerprint.toolchain["onnxruntime"] = "1.32.0"
    comparison = compare_results(synthetic_results(), new, 0.1, False)
    assert comparison.notes == ["toolchains differ: onnxruntime 1.31.1 -> 1.32.0"]


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
