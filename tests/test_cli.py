"""The CLI end to end on tiny models: exit codes, one-line errors, up-to-date rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiln.cli import main
from tests.conftest import CNN, write_config


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("kiln: error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_typo_in_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime", "precison": "fp32"}]})
    code, out = run("build", str(path), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "unknown key 'target.0.precison'" in _one_error_line(out)
    assert not (tmp_path / "b").exists(), "nothing is written before validation passes"


def test_unknown_target_exits_2_listing_choices(tmp_path: Path) -> None:
    path = write_config(tmp_path, CNN)
    code, out = run("build", str(path), "-t", "onnx", "--out", str(tmp_path / "b"))
    assert code == 2 and "choose one of: eager, aoti, onnxruntime" in _one_error_line(out)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("missing.py:build", "does not exist"),
        ("models.py", "is not recognised"),
        ("{models}:nope", "has no attribute 'nope'"),
        ("{models}:broken_factory", "raised RuntimeError: weights file missing"),
        ("model.onnx", "does not exist"),
    ],
)
def test_bad_model_source_exits_2_with_one_line(tmp_path: Path, source: str, expected: str) -> None:
    models = Path(__file__).parent / "models.py"
    model = {**CNN["model"], "source": source.format(models=models)}
    path = write_config(tmp_path, {"model": model, "target": [{"name": "onnxruntime"}]})
    code, out = run("build", str(path), "--out", str(tmp_path / "b"))
    assert code == 2, out
    assert expected in _one_error_line(out)


def test_parity_breach_exits_3_naming_output_figure_and_tolerance(tmp_path: Path) -> None:
    target = {"name": "onnxruntime", "tolerance": {"max_abs": 0.0}}
    path = write_config(tmp_path, {**CNN, "target": [target]})
    code, out = run("build", str(path), "--out", str(tmp_path / "b"))
    assert code == 3, out
    assert "kiln: gate: onnxruntime-fp32: output 'output': max_abs" in out
    assert "> tolerance 0" in out and "would pass" in out


def test_unavailable_target_exits_5_with_the_install_hint(tmp_path: Path) -> None:
    from kiln.targets import availability

    if availability("tensorrt").build:
        pytest.skip("TensorRT is available on this machine")
    path = write_config(tmp_path, CNN)
    code, out = run("build", str(path), "-t", "tensorrt:fp16", "--out", str(tmp_path / "b"))
    assert code == 5, out
    assert "tensorrt" in _one_error_line(out) and "kiln[tensorrt]" in out


def test_second_build_is_up_to_date_and_does_no_work(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**CNN, "target": [{"name": "eager"}, {"name": "onnxruntime"}]})
    out_dir = tmp_path / "b"
    code, out = run("build", str(path), "--out", str(out_dir))
    assert code == 0, out
    manifest = json.loads((out_dir / "cnn" / "onnxruntime-fp32" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] and manifest["gate"]["evaluation"]["value"] == 1.0  # the JSON a pipeline reads
    stamp = (out_dir / "cnn" / "onnxruntime-fp32" / "manifest.json").stat().st_mtime_ns
    code, out = run("build", str(path), "--out", str(out_dir))
    assert code == 0 and out.count("up to date") == 2
    assert (out_dir / "cnn" / "onnxruntime-fp32" / "manifest.json").stat().st_mtime_ns == stamp


def test_targets_explains_coreml_and_tensorrt() -> None:
    code, out = run("targets")
    assert code == 0
    text = " ".join(out.split())
    assert "coreml" in text and "tensorrt" in text
    from kiln.targets import availability

    for name in ("coreml", "tensorrt"):
        reason = availability(name).reason
        if reason:
            assert reason.split(";")[0].split(" (")[0] in text


def test_doctor_prints_the_fingerprint() -> None:
    code, out = run("doctor", "--json")
    assert code == 0
    fp = json.loads(out)
    assert {"cpu", "flags", "physical_cores", "memory_gib", "toolchain", "id"} <= set(fp)
    assert fp["toolchain"]["torch"].startswith("2.13")


def test_doctor_says_whether_int8_saturates_here() -> None:
    from kiln.quant.saturation import host_saturates

    code, out = run("doctor")
    assert code == 0 and "fingerprint:" in out
    assert ("int8:      u8 x s8 kernels saturate" in out) is host_saturates()


def test_export_writes_checked_onnx_and_program(tmp_path: Path) -> None:
    models = Path(__file__).parent / "models.py"
    out_dir = tmp_path / "b" / "cnn"
    code, out = run(
        "export", f"{models}:tiny_cnn", "--input", "x:batch,3,16,16", "--dim", "batch=1:2:8", "-o", str(out_dir)
    )
    assert code == 0, out
    import onnx

    proto = onnx.load(str(out_dir / "export" / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["x"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert (out_dir / "export" / "program.pt2").is_file()
    code, out = run("export", "x.py:f", "--input", "x")
    assert code == 2 and "expected NAME:DIMS" in out


def test_a_misspelt_target_option_exits_2_naming_it_before_any_export(tmp_path: Path) -> None:
    target = {"name": "onnxruntime", "precision": "int8", "options": {"calibrate_methd": "entropy"}}
    path = write_config(tmp_path, {**CNN, "target": [target]})
    code, out = run("build", str(path), "--out", str(tmp_path / "b"))
    assert code == 2, out
    line = _one_error_line(out)
    assert "unknown key 'calibrate_methd'" in line and "did you mean 'calibration_method'" in line
    assert not (tmp_path / "b" / "cnn" / "export").exists()


def test_a_program_target_on_an_onnx_source_exits_2_before_any_work(tmp_path: Path) -> None:
    model = {"name": "m", "source": "model.onnx", "inputs": [{"name": "x", "shape": [1, 4]}]}
    path = write_config(tmp_path, {"model": model, "target": [{"name": "aoti"}]})
    code, out = run("build", str(path), "--out", str(tmp_path / "b"))
    assert code == 2, out
    assert "aoti builds from the captured torch.export program" in _one_error_line(out)


def test_a_precision_whose_package_is_missing_is_refused_before_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.config import parse_config
    from kiln.errors import MissingDependencyError
    from kiln.pipeline.build import build
    from kiln.targets import Package, availability

    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: self.module != "torchao"))
    try:
        config = parse_config({**CNN, "target": [{"name": "aoti", "precision": "int8"}]}, tmp_path)
        (result,) = build(config, tmp_path / "b")
    finally:
        availability.cache_clear()
    assert isinstance(result.error, MissingDependencyError) and result.exit_code == 5
    assert "kiln[aoti-int8]" in str(result.error)
    assert sorted(p.name for p in (tmp_path / "b" / "cnn").iterdir()) == [".lock"]  # no export, no .prepared


def _passed(monkeypatch: pytest.MonkeyPatch, module: str, name: str, *args: str) -> tuple[object, ...]:
    """What ``kiln <args>`` passed to ``module.name`` (replaced, so nothing runs)."""
    import importlib

    from kiln.errors import ConfigError

    seen: list[tuple[object, ...]] = []

    def fake(*call: object, **_: object) -> None:
        seen.append(call)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    code, out = run(*args)
    assert code == 2 and "stopped by the test" in out, out
    return seen[0]


def test_option_groups_hand_each_command_one_settings_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared options (--out, --threads, --target) and each command's own reach its typed
    settings with the values given, defaults elsewhere, and --verbose still works beside them."""
    from kiln.api import GenerateSettings
    from kiln.fleet.runner import FleetOptions
    from kiln.serve.server import ServeSettings
    from kiln.tune.session import TuneSettings

    monkeypatch.setenv("KILN_VERBOSE", "0")  # -v sets it for the process; restored after the test
    (fleet,) = _passed(monkeypatch, "kiln.fleet.runner", "run_fleet", "fleet", "suite.toml", "-o", "r", "--only", "m")
    assert fleet == FleetOptions(suite=Path("suite.toml"), out=Path("r"), only=("m",))
    _, tune = _passed(
        monkeypatch,
        "kiln.tune.search",
        "tune",
        "tune",
        "k.toml",
        "--threads",
        "1,2",
        "-t",
        "onnxruntime",
        "--batch",
        "4",
    )
    assert tune == TuneSettings(threads=(1, 2), targets=("onnxruntime",), batch=4)
    _, _, generate = _passed(monkeypatch, "kiln.api", "generate", "generate", str(tmp_path), "-p", "hi", "-n", "3")
    assert generate == GenerateSettings(max_new_tokens=3)
    path, settings = _passed(
        monkeypatch, "kiln.serve.server", "serve", "serve", str(tmp_path), "--threads", "2", "--max-queue", "9", "-v"
    )
    assert path == (tmp_path,)
    assert settings == ServeSettings(threads=2, max_queue=9, verbose=True)
