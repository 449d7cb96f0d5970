"""A build's stages: a line as each starts and ends (time, peak RSS) where stderr is no terminal,
a live status on one, nothing from the API or with --quiet; each stage's figures in the manifest."""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from kiln.cli import main
from kiln.pipeline.progress import StageLine, Stages, reporter
from tests.conftest import CNN, write_config

DONE = re.compile(r"^m: (?P<stage>[\w :-]+): done in \d+\.\d s, peak RSS \d+(\.\d)? (MiB|GiB)$")


def test_stage_tells_its_start_and_end_and_records_it() -> None:
    told: list[str] = []
    stages = Stages("m", told.append)
    with stages.stage("export"):
        bytearray(2**20)
    assert told[0] == "m: export: started" and isinstance(told[0], StageLine) and not told[0].ended
    assert DONE.match(told[1]) and isinstance(told[1], StageLine) and told[1].ended, told
    [record] = stages.records
    assert record.name == "export" and record.seconds >= 0 and record.peak_rss_bytes > 2**20


def test_failed_stage_says_so_and_is_not_recorded() -> None:
    told: list[str] = []
    stages = Stages("m", told.append).child("onnxruntime-int4")
    with pytest.raises(RuntimeError), stages.stage("compile"):
        raise RuntimeError("toolchain")
    assert told[0] == "m: onnxruntime-int4: compile: started"
    assert told[1].startswith("m: onnxruntime-int4: compile: failed after ") and "peak RSS" in told[1]
    assert stages.records == []


def test_stage_line_survives_the_pipe_of_an_isolated_build() -> None:
    line = pickle.loads(pickle.dumps(StageLine("m: gate: started", ended=False)))
    assert line == "m: gate: started" and line.ended is False


def test_reporter_writes_one_line_per_message_off_a_terminal() -> None:
    stream = io.StringIO()
    with reporter(Console(file=stream, force_terminal=False)) as progress:
        progress(StageLine("m: export: started", ended=False))
        progress("m: export: capturing")
        progress(StageLine("m: export: done in 1.0 s, peak RSS 1.0 GiB", ended=True))
    assert stream.getvalue().splitlines() == [
        "kiln: m: export: started",
        "kiln: m: export: capturing",
        "kiln: m: export: done in 1.0 s, peak RSS 1.0 GiB",
    ]


def test_reporter_on_a_terminal_keeps_each_stage_end_above_the_live_line() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    with reporter(console) as progress:
        progress(StageLine("m: export: started", ended=False))
        progress(StageLine("m: export: done in 1.0 s, peak RSS [1.0] GiB", ended=True))
    assert "m: export: done in 1.0 s, peak RSS [1.0] GiB" in stream.getvalue()  # printed, markup escaped
    assert "kiln: m: export" not in stream.getvalue()  # not the plain lines


def test_quiet_reporter_shows_nothing() -> None:
    stream = io.StringIO()
    with reporter(Console(file=stream, force_terminal=False), quiet=True) as progress:
        progress(StageLine("m: export: started", ended=False))
    assert stream.getvalue() == ""


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("kiln: cnn:")]


def test_cli_build_off_a_terminal_prints_each_stage_and_the_manifest_records_them(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime"}]})
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    stages = [
        "load",
        "data",
        "export",
        "onnxruntime-fp32: compile",
        "onnxruntime-fp32: gate",
        "onnxruntime-fp32: write",
    ]
    for stage in stages:
        start = lines.index(f"kiln: cnn: {stage}: started")
        end = next(i for i, line in enumerate(lines) if line.startswith(f"kiln: cnn: {stage}: done in "))
        assert start < end and re.search(r"done in \d+\.\d s, peak RSS \d", lines[end])
    manifest = json.loads((tmp_path / "b" / "cnn" / "onnxruntime-fp32" / "manifest.json").read_text())
    recorded = manifest["stages"]
    assert [s["name"] for s in recorded] == ["load", "data", "export", "compile", "gate", "write"]
    peaks = [s["peak_rss_bytes"] for s in recorded]
    assert peaks == sorted(peaks) and peaks[0] > 0  # the process's peak so far only grows
    assert all(s["seconds"] >= 0 for s in recorded)


def test_cli_build_quiet_prints_only_the_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "eager"}]})
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _lines(result.output) == [] and "eager" in result.output


def test_api_build_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import kiln

    path = write_config(tmp_path, {**CNN, "target": [{"name": "eager"}]})
    told: list[str] = []
    kiln.build(path, tmp_path / "b", progress=told.append)
    out, err = capfd.readouterr()
    assert "cnn:" not in out + err
    assert "cnn: export: started" in told and any(line.startswith("cnn: eager-fp32: gate: done") for line in told)
