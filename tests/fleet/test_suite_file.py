"""One reader of suite files for ``make bench`` and ``kiln fleet``: the checked-in suite loads as
both see it, an entry's own settings and targets apply to that model alone, and a model whose
required files are missing is skipped with its hint by both (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.fleet.plan import make_plan
from kiln.fleet.report import FleetSession, merge
from kiln.fleet.resources import here
from kiln.fleet.store import Store
from kiln.fleet.suite import load_suite
from tests.fleet.conftest import tiny_suite

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_checked_in_suite_loads_for_the_fleet_with_each_entrys_settings() -> None:
    suite = load_suite(BENCHMARKS / "suite.toml")
    names = [c.model.name for _, c in suite.configs] + [name for name, _ in suite.skipped]
    assert {"digits", "mobilenet", "resnet50", "bert_base", "minilm", "tinyllm"} <= set(names)
    digits = dict((c.model.name, c) for _, c in suite.configs)["digits"]
    assert suite.bench_settings(digits).max_round_steal == 0.05 and suite.bench_settings(digits).threads == 2
    if "tinyllm" in suite.entries:  # trained here (make tinyllm): its entry's settings are its own
        tinyllm = dict((c.model.name, c) for _, c in suite.configs)["tinyllm"]
        assert suite.bench_settings(tinyllm).threads == 1 and suite.bench_settings(tinyllm).new_tokens == 48
    else:
        assert "make tinyllm" in dict(suite.skipped)["tinyllm"]


def _two_models(tmp_path: Path) -> Path:
    suite = tiny_suite(tmp_path, [{"name": "onnxruntime"}, {"name": "openvino"}])
    text = suite.read_text()
    text += 'targets = ["onnxruntime"]\nsettings = { threads = 2, rounds = 3 }\n'
    text += '\n[[model]]\nconfig = "cnn/kiln.toml"\nrequires = "weights/absent.bin"\nrequires_hint = "train it first"\n'
    suite.write_text(text)
    return suite


def test_an_entrys_targets_and_settings_apply_and_a_missing_requirement_skips(tmp_path: Path) -> None:
    suite = load_suite(_two_models(tmp_path))
    ((_, config),) = suite.configs
    assert [t.key for t in config.target] == ["eager-fp32", "onnxruntime-fp32"]
    settings = suite.bench_settings(config)
    assert (settings.threads, settings.rounds, settings.min_iters) == (2, 3, 5)  # entry, entry, suite
    ((name, why),) = suite.skipped
    assert name == "cnn" and str(tmp_path / "weights" / "absent.bin") in why and "train it first" in why

    # The fleet reports the skipped entry as a stage, with the same reason make bench prints.
    store = Store(tmp_path / "store")
    plan = make_plan(suite, store, [{"CPU": 2.0, **here(None)}])
    fleet = merge(suite, store, plan, {}, FleetSession("local", [], 0.0))
    skipped = [s for s in fleet.stages if s.status == "skipped" and s.reason and "train it first" in s.reason]
    assert [s.id for s in skipped] == ["cnn:export"]


def test_a_suite_of_only_missing_models_loads_and_a_bad_entry_is_one_line(tmp_path: Path) -> None:
    suite = tiny_suite(tmp_path, [{"name": "onnxruntime"}])
    suite.write_text(suite.read_text() + 'requires = "absent"\n')
    assert load_suite(suite).configs == () and len(load_suite(suite).skipped) == 1
    suite.write_text(suite.read_text() + "setings = { threads = 1 }\n")
    with pytest.raises(ConfigError, match=r"model\.0\.setings"):
        load_suite(suite)
