"""Quantization: the one calibration spec, its checks and hash, the refusal to calibrate on
nothing, every quantized target x precision through the parity gate, and the accuracy gate.

The fast tests need no toolchain beyond numpy; the builds are marked slow (an AOTInductor int8
compile is 10-30 s on 2 cores).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.config import DataSpec, parse_config
from kiln.data import digest_arrays, load_calibration
from kiln.errors import ConfigError, DataError
from kiln.pipeline.build import build, plan
from kiln.quant import CalibrationWarning, require_calibration, warn_few_samples
from kiln.quant.saturation import host_saturates
from kiln.spec import Signature
from kiln.targets import availability
from tests.conftest import CNN, MODELS, write_config

HERE = Path(__file__)
SIG = Signature(
    inputs=tuple(parse_config(CNN, Path(".")).model.inputs),
    dims=dict(parse_config(CNN, Path(".")).model.dims),
)


# Tiny models and data referenced from generated configs as f"{HERE}:name".


def tiny_attention() -> Any:
    """One self-attention block (MatMul -> Softmax -> MatMul) and an MLP, 64 wide, seeded."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
            self.up, self.down = nn.Linear(64, 128), nn.Linear(128, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 8.0, dim=-1)
            h = x + att @ self.v(x)
            return h + self.down(nn.functional.gelu(self.up(h)))

    torch.manual_seed(0)
    return Block().eval()


def cnn_fp32_targets() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The fp32 model's own logits as targets: eager's mse is 0, any int8 artifact's is not."""
    import torch

    from tests.models import tiny_cnn

    model, rng = tiny_cnn(), np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            yield {"x": x}, model(torch.from_numpy(x)).numpy()


def pairs() -> Iterator[dict[str, np.ndarray]]:
    """Calibration batches of 2 for a spec whose batch dim is static at 2."""
    rng = np.random.default_rng(7)
    for _ in range(16):
        yield {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}


def wrong_shape() -> Iterator[dict[str, np.ndarray]]:
    yield {"x": np.zeros((1, 3, 15, 16), np.float32)}


def fails_midway() -> Iterator[dict[str, np.ndarray]]:
    yield {"x": np.zeros((1, 3, 16, 16), np.float32)}
    raise OSError("disk gone")


# The calibration spec: sources, checks, hash, seed, warnings.


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_calibration_npz_loads_every_sample_when_they_fit(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=_samples(5))
    cal = load_calibration(DataSpec(source="cal.npz", samples=10), SIG, tmp_path)
    assert len(cal.samples) == 5
    assert cal.samples[0]["x"].shape == (1, 3, 16, 16)
    assert cal.digest == digest_arrays(cal.samples)
    assert cal.summary() == {"source": "cal.npz", "samples": 5, "sha256": cal.digest}


def test_calibration_npz_subset_is_seeded_when_more_samples_than_asked(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=_samples(50))
    load = lambda seed: load_calibration(DataSpec(source="cal.npz", samples=8, seed=seed), SIG, tmp_path)  # noqa: E731
    first, again, other = load(0), load(0), load(1)
    assert len(first.samples) == 8
    assert first.digest == again.digest
    assert first.digest != other.digest


def test_calibration_folder_of_npy_and_npz_loads_in_name_order(tmp_path: Path) -> None:
    data = _samples(3)
    folder = tmp_path / "cal"
    folder.mkdir()
    np.save(folder / "a.npy", data[0:1])
    np.savez(folder / "b.npz", x=data[1:2])
    np.save(folder / "c.npy", data[2:3])
    cal = load_calibration(DataSpec(source="cal"), SIG, tmp_path)
    assert [s["x"].tolist() for s in cal.samples] == [data[i : i + 1].tolist() for i in range(3)]


def test_calibration_callable_is_asked_for_samples_in_order() -> None:
    cal = load_calibration(DataSpec(source=f"{MODELS}:cnn_calibration", samples=4), SIG, Path("."))
    assert len(cal.samples) == 4
    assert cal.source.endswith(":cnn_calibration")


def test_calibration_shape_mismatch_is_exit_2_naming_input_shape_and_expected() -> None:
    with pytest.raises(DataError) as err:
        load_calibration(DataSpec(source=f"{HERE}:wrong_shape"), SIG, Path("."))
    assert err.value.exit_code == 2
    message = str(err.value)
    assert "'x'" in message and "[1, 3, 15, 16]" in message and "16, 16]" in message and "expected" in message


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: np.savez(d / "cal.npz", y=_samples(2)), "no input 'x'"),
        (lambda d: np.savez(d / "cal.npz", x=_samples(2), y=np.zeros(3)), "share their first"),
        (lambda d: (d / "cal").mkdir(), "no .npy or .npz"),
    ],
    ids=["npz-missing-input", "npz-unequal-lengths", "empty-folder"],
)
def test_calibration_bad_stored_data_is_exit_2(tmp_path: Path, make: Any, fragment: str) -> None:
    make(tmp_path)
    source = "cal" if (tmp_path / "cal").is_dir() else "cal.npz"
    with pytest.raises(DataError, match=fragment):
        load_calibration(DataSpec(source=source), SIG, tmp_path)


def test_calibration_missing_source_is_exit_2_listing_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found; give a \.npz file, a folder"):
        load_calibration(DataSpec(source="nowhere.npz"), SIG, tmp_path)


def test_calibration_generator_failing_midway_is_exit_2_with_the_cause() -> None:
    with pytest.raises(DataError, match="failed at sample 1: OSError: disk gone"):
        load_calibration(DataSpec(source=f"{HERE}:fails_midway", samples=5), SIG, Path("."))


def test_few_samples_warns_and_returns_the_note_only_below_guidance(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=_samples(4))
    cal = load_calibration(DataSpec(source="cal.npz"), SIG, tmp_path)
    with pytest.warns(CalibrationWarning, match="4 samples, fewer than the 100"):
        note = warn_few_samples(cal, 100, "onnxruntime-int8")
    assert note is not None and "raise [calibration].samples" in note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_few_samples(cal, 4, "onnxruntime-int8") is None


def test_require_calibration_refuses_none_and_notes_a_set_below_guidance(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never calibrates on random inputs"):
        require_calibration(None, "int8", "onnxruntime-int8 (onnxruntime)", 100)
    np.savez(tmp_path / "cal.npz", x=_samples(4))
    cal = load_calibration(DataSpec(source="cal.npz"), SIG, tmp_path)
    with pytest.warns(CalibrationWarning):
        same, notes = require_calibration(cal, "int8", "openvino-int8 (nncf)", 300)
    assert same is cal and len(notes) == 1 and notes[0].startswith("openvino-int8 (nncf): calibrating on 4")


def test_target_cache_key_changes_with_calibration_content(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=_samples(4, seed=0))
    data = {**CNN, "calibration": {"source": "cal.npz"}, "target": [{"name": "onnxruntime", "precision": "int8"}]}
    before = plan(parse_config(data, tmp_path), tmp_path / "build").targets["onnxruntime-int8"].key
    np.savez(tmp_path / "cal.npz", x=_samples(4, seed=1))
    after = plan(parse_config(data, tmp_path), tmp_path / "build").targets["onnxruntime-int8"].key
    assert before != after


# Builds: refusal without data, every quantized precision through the gate, the accuracy gate.


def _need(*targets: str) -> None:
    for target in targets:
        if not availability(target).run:
            pytest.skip(f"{target}: {availability(target).reason}")


def _manifest(result: Any) -> dict[str, Any]:
    assert result.error is None, f"{result.target.key}: {result.error}"
    return result.manifest.to_json()


@pytest.mark.slow
def test_static_int8_is_refused_without_calibration_while_dynamic_and_weight_only_build(tmp_path: Path) -> None:
    _need("onnxruntime", "openvino")
    model = {
        "name": "attn",
        "source": f"{HERE}:tiny_attention",
        "inputs": [{"name": "x", "shape": ["batch", 8, 64]}],
        "dims": {"batch": {"min": 1, "opt": 2, "max": 4}},
    }
    # Static quantizers are refused while the build is planned, before any export starts.
    for static in (("onnxruntime", "int8"), ("openvino", "int8"), ("aoti", "int8")):
        config = parse_config({"model": model, "target": [{"name": static[0], "precision": static[1]}]}, tmp_path)
        with pytest.raises(ConfigError) as refused:
            plan(config, tmp_path / "build")
        assert refused.value.exit_code == 2
        assert "no [calibration]" in str(refused.value) and "never calibrates on random inputs" in str(refused.value)
    assert not (tmp_path / "build").exists()
    targets = [("onnxruntime", "int8-dynamic"), ("openvino", "int8-weights"), ("openvino", "int4")]
    data = {"model": model, "target": [{"name": t, "precision": p} for t, p in targets]}
    results = {r.target.key: r for r in build(parse_config(data, tmp_path), tmp_path / "build")}
    dynamic = _manifest(results["onnxruntime-int8-dynamic"])
    assert dynamic["gate"]["passed"], dynamic["gate"]["breaches"]
    assert dynamic["execution"]["quantization"]["attention_detected"] is True
    assert dynamic["execution"]["notes"] == []  # not conv-heavy: no slow-path warning
    for key, mode in (("openvino-int8-weights", "int8_asym"), ("openvino-int4", "int4_sym")):
        manifest = _manifest(results[key])
        assert manifest["gate"]["passed"], (key, manifest["gate"]["breaches"])
        assert manifest["execution"]["quantization"]["mode"] == mode
        assert manifest["calibration"] is None
    # 64-wide layers split into groups of 64: the middle ones really are 4-bit, the first and last
    # stay in NNCF's int8 backup mode.
    constants = _manifest(results["openvino-int4"])["execution"]["quantization"]["weight_constants"]
    assert constants.get("i4", 0) > 0 and constants.get("u8", 0) > 0


@pytest.fixture(scope="module")
def cnn_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("quant-cnn")
    targets = [
        {
            "name": "onnxruntime",
            "precision": "int8",
            "options": {"calibration_method": "entropy", "calibration_chunk": 8},  # 4 passes of 8
        },
        {"name": "onnxruntime", "precision": "int8-dynamic"},
        {"name": "onnxruntime", "precision": "fp16"},
        {"name": "openvino", "precision": "int8"},
        {"name": "openvino", "precision": "fp16"},
        {"name": "aoti", "precision": "int8"},
    ]
    available = [t for t in targets if availability(t["name"]).run]
    config = parse_config({**CNN, "target": available, "gates": {"max_metric_drop": 0.25}}, folder)
    return {"results": {r.target.key: r for r in build(config, folder / "build")}, "config": config}


QUANTIZED = ["onnxruntime-int8", "onnxruntime-int8-dynamic", "onnxruntime-fp16", "openvino-int8", "openvino-fp16"]


@pytest.mark.slow
@pytest.mark.parametrize("key", [*QUANTIZED, "aoti-int8"])
def test_quantized_artifact_passes_parity_with_default_tolerances(cnn_build: dict[str, Any], key: str) -> None:
    _need(key.split("-")[0])
    manifest = _manifest(cnn_build["results"][key])
    gate = manifest["gate"]
    assert gate["passed"], gate["breaches"]
    assert gate["parity"]["tolerance"]["min_cosine"] is not None  # the precision's default applied
    assert gate["evaluation"]["metric"] == "top1"


@pytest.mark.slow
@pytest.mark.parametrize("key", ["onnxruntime-int8", "openvino-int8", "aoti-int8"])
def test_static_int8_manifest_records_the_calibration_hash_it_was_fed(cnn_build: dict[str, Any], key: str) -> None:
    _need(key.split("-")[0])
    config = cnn_build["config"]
    expected = load_calibration(config.calibration, SIG, config.root)
    manifest = _manifest(cnn_build["results"][key])
    assert manifest["calibration"]["sha256"] == expected.digest
    assert manifest["execution"]["quantization"]["calibration_samples"] == 32
    assert any("fewer than the" in note for note in manifest["execution"]["notes"])  # 32 < guidance
    assert manifest["gate"]["parity"]["inputs"].startswith("calibration + evaluation")


@pytest.mark.slow
def test_ort_int8_uses_the_calibration_method_from_options(cnn_build: dict[str, Any]) -> None:
    _need("onnxruntime")
    quant = _manifest(cnn_build["results"]["onnxruntime-int8"])["execution"]["quantization"]
    assert quant["calibration_method"] == "entropy"
    assert quant["calibration_chunk"] == 8  # the 32 samples went through in passes of 8
    assert quant["format"] == "QDQ" and quant["weights"].startswith("int8 per-channel")
    assert quant["reduce_range"] is host_saturates()  # 7-bit weights only where int8 saturates


@pytest.mark.slow
def test_ort_dynamic_quantization_of_a_conv_net_warns_it_is_slow(cnn_build: dict[str, Any]) -> None:
    _need("onnxruntime")
    notes = _manifest(cnn_build["results"]["onnxruntime-int8-dynamic"])["execution"]["notes"]
    assert any("ConvInteger" in note and "onnxruntime:int8 (static)" in note for note in notes)


@pytest.mark.slow
def test_openvino_int8_uses_accuracy_control_when_evaluation_and_gate_are_set(cnn_build: dict[str, Any]) -> None:
    _need("openvino")
    execution = _manifest(cnn_build["results"]["openvino-int8"])["execution"]
    assert execution["quantization"]["tool"] == "nncf.quantize_with_accuracy_control"
    assert execution["quantization"]["model_type"] == "none"  # a CNN: no attention in the graph
    assert execution["compute_precisions"].get("int8", 0) > 0


@pytest.mark.slow
def test_openvino_fp16_records_the_precision_the_plugin_really_runs(cnn_build: dict[str, Any]) -> None:
    import openvino as ov

    _need("openvino")
    execution = _manifest(cnn_build["results"]["openvino-fp16"])["execution"]
    compiled = ov.Core().compile_model(
        ov.Core().read_model(str(_folder(cnn_build, "openvino-fp16") / "model.xml")),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f16"},
    )
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert execution["inference_precision_hint"] == {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}[ran]
    if ran != "f16":
        assert any("no native fp16 compute" in note for note in execution["notes"])


def _folder(cnn_build: dict[str, Any], key: str) -> Path:
    config = cnn_build["config"]
    return config.root / "build" / config.model.name / key


@pytest.mark.slow
def test_aoti_int8_package_is_a_pt2e_int8_program(cnn_build: dict[str, Any]) -> None:
    _need("aoti")
    execution = _manifest(cnn_build["results"]["aoti-int8"])["execution"]
    assert execution["quantization"]["tool"].startswith("torchao.quantization.pt2e")
    # The CNN's batch dim is dynamic: kiln does not fuse (torch 2.13's fused int8 kernels are
    # wrong there), and says so.
    assert execution["int8_kernel_calls"] == 0
    assert execution["execution_precision"].startswith("fp32 kernels on int8-rounded values")


@pytest.mark.slow
def test_accuracy_gate_fails_with_exit_3_naming_the_metric(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kiln.cli import main

    _need("onnxruntime")
    data = {
        **CNN,
        # mse against the fp32 logits: eager scores 0 and no int8 artifact can; a zero drop is impossible.
        "evaluation": {"source": f"{HERE}:cnn_fp32_targets", "metric": "mse"},
        "target": [{"name": "onnxruntime", "precision": "int8"}],
        "gates": {"max_metric_drop": 0.0},
    }
    path = write_config(tmp_path, data)
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "build")])
    assert result.exit_code == 3, result.output
    assert "metric 'mse' dropped" in result.output and "max_metric_drop" in result.output
    manifest = json.loads((tmp_path / "build" / "cnn" / "onnxruntime-int8" / "manifest.json").read_text())
    assert manifest["gate"]["evaluation"]["drop"] > 0


@pytest.mark.slow
def test_aoti_int8_fuses_real_int8_kernels_when_every_dim_is_static(tmp_path: Path) -> None:
    _need("aoti")
    data = {
        "model": {**CNN["model"], "dims": {"batch": {"min": 2, "max": 2}}},
        "calibration": {"source": f"{HERE}:pairs", "samples": 16},
        "target": [{"name": "aoti", "precision": "int8"}],
    }
    (result,) = build(parse_config(data, tmp_path), tmp_path / "build")
    manifest = _manifest(result)
    assert manifest["gate"]["passed"], manifest["gate"]["breaches"]
    assert manifest["execution"]["int8_kernel_calls"] > 0
    assert manifest["execution"]["execution_precision"] == "int8"
