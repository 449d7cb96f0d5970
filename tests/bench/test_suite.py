"""The benchmark suite's files: every config loads, its quantized cells have calibration that
fits the model's inputs, a model whose files are missing is skipped with its reason, and the
summary shows each speed-up with its interval."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from kiln.config import BenchSettings, load_config
from kiln.data import load_calibration
from kiln.spec import Signature
from kiln.targets import REGISTRY
from tests.bench.synthetic import synthetic_results

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITE = tomllib.loads((BENCHMARKS / "suite.toml").read_text())
QUANTIZED = ("mobilenet", "resnet50", "bert_base")


def _run_suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_suite", BENCHMARKS / "run_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_settings_and_entries_validate() -> None:
    settings = BenchSettings.model_validate(SUITE["settings"]).resolve(physical_cores=2)
    assert settings.rounds >= 6 and settings.max_rounds is not None and settings.max_rounds > settings.rounds
    for entry in SUITE["model"]:
        config = load_config((BENCHMARKS / entry["config"]).resolve())
        BenchSettings.model_validate(entry.get("settings", {}))
        assert config.target, entry


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_cells_have_calibration_in_the_models_ranges(name: str) -> None:
    config = load_config(BENCHMARKS / name / "kiln.toml")
    keys = {t.key for t in config.target}
    assert {"onnxruntime-int8", "openvino-int8"} <= keys and any(k.startswith("executorch-") for k in keys)
    for t in config.target:
        REGISTRY[t.name].precision(t.precision)  # every target x precision exists
    assert config.calibration is not None
    spec = config.calibration.model_copy(update={"samples": 3})
    sig = Signature(tuple(config.model.inputs), dict(config.model.dims))
    calibration = load_calibration(spec, sig, config.root)
    assert len(calibration.samples) == 3
    for sample in calibration.samples:
        for inp in sig.inputs:
            array = sample[inp.name]
            if inp.range is not None:
                assert inp.range[0] <= array.min() and array.max() <= inp.range[1]
            else:  # ImageNet-normalized pixels lie within [-2.2, 2.7]
                assert array.min() >= -2.2 and array.max() <= 2.7 and np.std(array) > 0.3


def test_missing_model_is_skipped_with_its_reason(tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    config = (BENCHMARKS / "../examples/tinyllm/kiln.toml").resolve()
    suite.write_text(
        f'[settings]\nthreads = 1\n\n[[model]]\nconfig = "{config}"\nrequires = "{tmp_path / "absent"}"\n'
        'requires_hint = "train it first"\n'
    )
    assert _run_suite().main(["--suite", str(suite), "--results", str(tmp_path / "results")]) == 0


def test_summary_shows_intervals_rounds_and_skips() -> None:
    results = synthetic_results()
    results.cells[1] = results.cells[1].model_copy(
        update={"speedup_vs_eager": 4.1, "speedup_ci_low": 3.9, "speedup_ci_high": 4.3, "rounds": 9}
    )
    text = _run_suite().summary([results], [], 60.0, ["tinyllm: skipped, model missing"])
    assert "| 4.10× [3.90–4.30] | 9 |" in text
    assert "## Models skipped" in text and "tinyllm: skipped" in text
