"""``kiln bench --profile``: each runtime's profiler folded into one table per artifact (tiny CNN
built once per module), the fp32 flag on constructed profiles, the flag and config, the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiln.bench.profile import FP32_FLAG, OpTime, fold, fp32_flag, profile_artifact, xnnpack_op
from kiln.cli import main
from kiln.config import BenchSettings
from kiln.manifest import Manifest
from kiln.report.console import print_results
from kiln.report.html import render_html
from kiln.report.markdown import render_markdown
from kiln.report.profile import summary_line
from kiln.results import MeasuredCell, OpProfile, Results
from tests.bench.synthetic import synthetic_results
from tests.conftest import CNN, skip_unless, write_config

KEYS = ("eager-fp32", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8")
TARGETS = [{"name": "eager"}, {"name": "onnxruntime"}, {"name": "onnxruntime", "precision": "int8"}]
TARGETS += [{"name": "openvino"}, {"name": "openvino", "precision": "int8"}]


@pytest.fixture(scope="module")
def cnn_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN built for eager, onnxruntime fp32/int8 and openvino fp32/int8."""
    skip_unless("openvino", run=True)
    skip_unless("onnxruntime", run=True)
    folder = tmp_path_factory.mktemp("profile")
    config = write_config(folder, {**CNN, "target": TARGETS})
    result = CliRunner().invoke(main, ["build", str(config), "--out", str(folder / "build")])
    assert result.exit_code == 0, result.output
    return folder / "build" / "cnn"


@pytest.mark.parametrize("key", KEYS)
def test_profile_table_has_op_kinds_and_shares_summing_to_one(cnn_build: Path, key: str) -> None:
    folder = cnn_build / key
    profile = profile_artifact(folder, Manifest.read(folder), batch=2, threads=1)
    assert profile.unavailable is None and profile.runs > 0
    kinds = {row.kind for row in profile.rows}
    assert kinds & {"Conv", "Convolution"}, kinds  # the CNN's convolutions are seen, whatever the runtime calls them
    assert sum(row.share for row in profile.rows) == pytest.approx(1.0, abs=0.01)
    assert sum(profile.precision_shares.values()) == pytest.approx(1.0, abs=0.01)
    assert (profile.fp32_share is None) == key.endswith("fp32")


@pytest.mark.parametrize("key", ["onnxruntime-int8", "openvino-int8"])
def test_int8_artifact_profile_shows_int8_convolutions(cnn_build: Path, key: str) -> None:
    folder = cnn_build / key
    profile = profile_artifact(folder, Manifest.read(folder), batch=2, threads=1)
    precisions = {row.precision for row in profile.rows if row.kind in ("Conv", "Convolution")}
    assert precisions == {"int8"}
    assert profile.fp32_share is not None and profile.fp32_share < FP32_FLAG


def test_fp32_artifact_profile_shows_no_int8(cnn_build: Path) -> None:
    folder = cnn_build / "openvino-fp32"
    profile = profile_artifact(folder, Manifest.read(folder), batch=1, threads=1)
    assert set(profile.precision_shares) == {"fp32"}


def test_profile_of_a_target_without_profiler_says_why(cnn_build: Path) -> None:
    manifest = Manifest.read(cnn_build / "eager-fp32").model_copy(update={"target": "tensorrt"})
    profile = profile_artifact(cnn_build / "eager-fp32", manifest, batch=1, threads=1)
    assert profile.unavailable == "kiln has no profiler for tensorrt yet" and not profile.rows


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Convolution (NHWC, QC8) IGEMM #1", ("Convolution", "int8")),
        ("Fully Connected (NC, QS8, QC8W) GEMM #1", ("Fully Connected", "int8")),
        ("Transpose (ND, X32) #2", ("Transpose", "fp32")),
        ("Mean (ND) Reduce2 #1", ("Mean", "-")),
    ],
)
def test_xnnpack_op_names_give_kind_and_precision(name: str, expected: tuple[str, str]) -> None:
    assert xnnpack_op(name) == expected


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_executorch_profile_comes_from_etdump(tmp_path: Path, precision: str) -> None:
    skip_unless("executorch", run=True)
    config = write_config(tmp_path, {**CNN, "target": [{"name": "executorch", "precision": precision}]})
    result = CliRunner().invoke(main, ["build", str(config), "--out", str(tmp_path / "build")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "build" / "cnn" / f"executorch-{precision}"
    profile = profile_artifact(folder, Manifest.read(folder), batch=1, threads=1)
    assert profile.source.startswith("ExecuTorch ETDump") and profile.unavailable is None
    convolutions = [row for row in profile.rows if row.kind == "Convolution"]
    assert convolutions and {row.precision for row in convolutions} == {precision}


def _quantized(fp32_ms: float) -> list[OpTime]:
    return [
        OpTime("FullyConnected", "int8", 6.0, "AMX", count=12),
        *[OpTime("MatMul", "fp32", fp32_ms / 17, count=1) for _ in range(9)],
        *[OpTime("Softmax", "fp32", fp32_ms / 17, count=1) for _ in range(8)],
        OpTime("Reorder", "fp32", 0.4, count=3),  # layout, not compute left in fp32
        OpTime("FakeQuantize", "fp32", 0.2, count=2),  # quantization's own conversion
    ]


def test_fp32_flag_names_the_share_and_the_ops_left_in_fp32() -> None:
    profile = fold(_quantized(fp32_ms=4.0), "test", 5, quantized=True)
    assert profile.fp32_share == pytest.approx(4.0 / 10.6, abs=1e-3)
    assert profile.fp32_ops == {"MatMul": 9, "Softmax": 8}
    assert profile.flag == "38% of the time is in 17 ops left in fp32: MatMul ×9, Softmax ×8"
    assert profile.layout_ops == 3 and profile.layout_share == pytest.approx(0.4 / 10.6, abs=1e-3)
    assert sum(r.share for r in profile.rows) == pytest.approx(1.0, abs=0.01)


def test_fp32_flag_is_absent_below_the_threshold_and_for_fp32_artifacts() -> None:
    assert fold(_quantized(fp32_ms=0.5), "test", 5, quantized=True).flag is None
    fp32 = fold(_quantized(fp32_ms=4.0), "test", 5, quantized=False)
    assert fp32.fp32_share is None and fp32.flag is None and fp32_flag(fp32) is None


def test_fold_keeps_the_largest_rows_and_folds_the_rest_into_other() -> None:
    ops = [OpTime(f"Op{i}", "fp32", float(i + 1)) for i in range(12)]
    profile = fold(ops, "test", 5, quantized=False)
    assert len(profile.rows) == 8 and profile.rows[-1].kind == "other" and profile.rows[0].kind == "Op11"
    assert profile.rows[-1].ops == 5
    assert sum(r.share for r in profile.rows) == pytest.approx(1.0, abs=0.01)


def test_bench_setting_profile_comes_from_config_and_the_flag_overrides_it() -> None:
    config = BenchSettings.model_validate({"profile": True})
    assert config.merged(BenchSettings()).profile is True  # the flag not given
    assert config.merged(BenchSettings(profile=False)).profile is False
    assert "profile" not in BenchSettings().model_dump()  # off: results.json unchanged


def _profiled_results() -> Results:
    results = synthetic_results()
    profile = fold(_quantized(fp32_ms=4.0), "OpenVINO PERF_COUNT", 5, quantized=True)
    cells = [
        c.model_copy(update={"profile": profile, "flags": [profile.flag]})
        if isinstance(c, MeasuredCell) and c.target != "eager"
        else c
        for c in results.cells
    ]
    return results.model_copy(update={"cells": cells})


def test_reports_show_one_table_and_a_stacked_bar_per_profiled_artifact(capsys: pytest.CaptureFixture[str]) -> None:
    results = Results.model_validate_json(_profiled_results().model_dump_json())  # round-trips results.json
    markdown = render_markdown(results)
    assert "## Where the time goes (--profile)" in markdown
    assert "| FullyConnected | int8 | AMX | 12 |" in markdown
    assert "fp32 ops: 38% (MatMul ×9, Softmax ×8)" in markdown
    html = render_html(results)
    assert 'data-plot="profile"' in html and html.count('class="segment"') >= 4
    print_results(results)
    out = capsys.readouterr().out
    assert "profile onnxruntime fp32: 57% FullyConnected (int8), 38% fp32 ops, 4% reorders" in out
    assert "38% of the time is in 17 ops left in fp32" in out


def test_summary_line_of_an_unavailable_profile_says_why() -> None:
    profile = OpProfile(source="none", runs=0, total_ms=0.0, unavailable="no tracer")
    assert summary_line("executorch fp32", profile) == "executorch fp32: no profile (no tracer)"


def test_cli_profile_flag_adds_profiles_to_results(cnn_build: Path, tmp_path: Path) -> None:
    args = ["bench", str(cnn_build), "--target", "openvino:int8", "--profile", "--threads", "1"]
    args += ["--min-seconds", "0.1", "--rounds", "2", "--warmup-seconds", "0.01", "--report-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    assert "profile openvino int8:" in result.output and "profile eager fp32:" in result.output
    data = json.loads((tmp_path / "results.json").read_text())
    profiles = {c["key"]: c.get("profile") for c in data["cells"]}
    assert profiles["openvino-int8"]["rows"] and profiles["eager-fp32"]["rows"]
    assert data["settings"]["profile"] is True
    assert "## Where the time goes" in (tmp_path / "report.md").read_text()


def test_console_groups_flags_of_one_kind_into_one_line_with_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    results = _profiled_results()
    wide = "wide interval: the speed-up is 2.00x [1.50-2.50], +-25.0% after 6 rounds"
    cells = [c.model_copy(update={"flags": [*c.flags, wide]}) for c in results.cells]
    print_results(results.model_copy(update={"cells": cells}))
    out = capsys.readouterr().out
    assert f"{len(cells)} cells: wide interval (" in out and "see report.md" in out
    assert out.count("wide interval") == 1  # one line, not one per cell
    assert "onnxruntime-fp32 batch 1: 38% of the time is in 17 ops left in fp32" in out  # a kind on one cell: in full


def test_report_opens_with_the_fastest_artifact_within_the_gate() -> None:
    results = synthetic_results()
    markdown = render_markdown(results)
    lines = [line for line in markdown.splitlines() if line.startswith("- batch 1:")]
    top = markdown.index("**Fastest within the gate**")
    assert lines and top < markdown.index("## Batch 1")
    assert "onnxruntime-fp32" in lines[0] and "vs eager" in lines[0] and "trades: runs fp32" in lines[0]
    failed = [c.model_copy(update={"parity_passed": False}) if c.target != "eager" else c for c in results.cells]
    assert "Fastest within the gate" not in render_markdown(results.model_copy(update={"cells": failed}))


def test_fp32_flag_names_the_kinds_that_took_the_most_time_first() -> None:
    ops = [OpTime("Conv", "int8", 1.0), OpTime("MatMul", "fp32", 6.0, count=6), OpTime("Add", "fp32", 0.5, count=25)]
    profile = fold(ops, "test", 5, quantized=True)
    assert list(profile.fp32_ops) == ["MatMul", "Add"]
    assert profile.flag == "87% of the time is in 31 ops left in fp32: MatMul ×6, Add ×25"
