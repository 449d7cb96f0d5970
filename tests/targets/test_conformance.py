"""One conformance suite, written once, run against every registered target x precision.

For each tiny model, every target that can build here is built in one ``kiln build`` (one export,
one eager reference). Each case then checks: it built and passed the parity gate; the artifact
round-trips through its manifest and loads in a fresh runner; that runner matches eager at the
min and max of the batch dim within the precision's tolerance; the runner is reusable; the
manifest's checksums match the files. Targets that cannot build or run here skip with the reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.build import build, load_artifact
from kiln.config import parse_config
from kiln.errors import UnavailableError
from kiln.parity import ParityReport, tolerance_for
from kiln.spec import Signature, random_inputs
from kiln.store import sha256_file
from kiln.targets import REGISTRY, availability, implementation
from kiln.targets.base import RunOptions
from tests.conftest import CNN, TWO

MODELS = {"cnn": CNN, "two": TWO}
CASES = [(t, p) for t, spec in REGISTRY.items() for p in spec.precisions]
# (target, precision, model) -> why it is expected to fail; xfail is strict, so a fix shows up.
EXPECTED_FAILURES: dict[tuple[str, str, str], str] = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, base in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        targets = [{"name": t, "precision": p} for t, p in CASES if availability(t).build and _has_module(t)]
        config = parse_config({**base, "target": targets}, folder)
        out[name] = {r.target.key: r for r in build(config, folder / "build")}
        out[name]["_config"] = config
    return out


def _has_module(target: str) -> bool:
    # tests/test_registry.py fails on a spec without a module; here it only skips.
    return importlib.util.find_spec(REGISTRY[target].module) is not None


def _result(built: dict[str, dict[str, Any]], target: str, precision: str, model: str) -> Any:
    if (target, precision, model) in EXPECTED_FAILURES:
        pytest.xfail(EXPECTED_FAILURES[(target, precision, model)])
    avail = availability(target)
    if not avail.build:
        pytest.skip(f"{target}: {avail.reason}")
    if not _has_module(target):
        pytest.skip(f"{target}: module {REGISTRY[target].module} is missing")
    result = built[model][f"{target}-{precision}"]
    if isinstance(result.error, UnavailableError):
        pytest.skip(str(result.error))
    return result


def _eager(model: str) -> Any:
    from kiln.sources import load_source

    config = parse_config(MODELS[model], Path("."))
    return load_source(config.model, config.root).module


def _reference(model: str, sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from kiln.targets.eager import TorchRunner

    return TorchRunner(_eager(model), sig, RunOptions()).infer(inputs)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_target_builds_and_passes_parity(built: Any, target: str, precision: str, model: str) -> None:
    result = _result(built, target, precision, model)
    assert result.error is None, f"{target}:{precision} failed: {result.error}"
    gate = result.manifest["gate"]
    assert gate["passed"], gate["breaches"]
    if gate.get("parity"):
        assert gate["parity"]["cases"] >= 3  # min, opt, max of the batch dim (+ calibration)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_artifact_round_trips_and_matches_eager_at_min_and_max(
    built: Any, target: str, precision: str, model: str
) -> None:
    result = _result(built, target, precision, model)
    if not availability(target).run:
        pytest.skip(f"{target}: {availability(target).reason}")
    folder = built[model]["_config"].root / "build" / model / f"{target}-{precision}"
    artifact = load_artifact(folder)
    sig = artifact.signature
    report = ParityReport(tolerance_for(precision, None), primary=sig.outputs[0])
    with implementation(target).load(artifact, RunOptions(threads=1)) as runner:
        for point, seed in (("min", 11), ("max", 12)):
            inputs = random_inputs(sig, point, seed=seed)
            got = runner.infer(inputs)
            assert list(got) == list(sig.outputs)
            assert got[sig.outputs[0]].shape[0] == sig.size("batch", point)
            report.add_case(got, _reference(model, sig, inputs))
            again = runner.infer(inputs)  # the runner is reusable and deterministic
            for name in got:
                np.testing.assert_allclose(again[name], got[name], rtol=1e-5, atol=1e-6)
    assert report.passed, report.breaches()
    assert result.manifest["execution"].get("execution_precision"), "execution precision must be recorded"


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_manifest_checksums_match_files(built: Any, target: str, precision: str, model: str) -> None:
    result = _result(built, target, precision, model)
    folder = built[model]["_config"].root / "build" / model / f"{target}-{precision}"
    manifest = result.manifest
    assert manifest["files"], "an artifact has files"
    for entry in manifest["files"]:
        assert sha256_file(folder / entry["path"]) == entry["sha256"], entry["path"]
    assert manifest["signature"]["outputs"] == built[model][next(iter(built[model]))].manifest["signature"]["outputs"]


def test_output_names_are_stable_for_nested_outputs(built: Any) -> None:
    first = next(r for k, r in built["two"].items() if k != "_config" and r.manifest)
    assert first.manifest["signature"]["outputs"] == ["logits", "extra.0", "extra.1"]
