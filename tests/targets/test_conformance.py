"""One conformance suite, written once, run against every registered target x precision.

For each tiny model, the targets selected in this session are built in one ``kiln build`` (one
export, one eager reference). Each case then checks: it built and passed the parity gate; the
artifact round-trips through its manifest and loads in a fresh runner; that runner matches eager
at the min and max of the batch dim within the precision's tolerance; the runner is reusable; the
manifest's checksums match the files.

Everything target-specific comes from the registry: cases are its rows, markers and skips come
from its hardware needs (``@pytest.mark.target``, tests/conftest.py), expected failures from its
``known_issues`` (strict: a fix shows up as an unexpected pass). A target that builds but cannot
run here is reported as built-not-run (skipped with the reason), never as conforming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.config import parse_config
from kiln.errors import UnavailableError
from kiln.parity import ParityReport
from kiln.pipeline.build import build
from kiln.spec import Signature, random_inputs
from kiln.store import sha256_file
from kiln.targets import REGISTRY, implementation, tolerance_for
from kiln.targets.base import Artifact, RunOptions
from tests.conftest import CNN, TWO, selected_targets

MODELS = {"cnn": CNN, "two": TWO}


def _cases() -> list[Any]:
    cases = []
    for name, spec in REGISTRY.items():
        known = dict(spec.known_issues)
        for precision in spec.precision_names:
            marks = [pytest.mark.xfail(strict=True, reason=known[precision])] if precision in known else []
            cases.append(pytest.param(name, precision, marks=marks, id=f"{name}-{precision}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One build per model of every target x precision this session selected that can build here."""
    # eager first: the nested-output names test reads it.
    wanted: dict[tuple[str, str], None] = {("eager", "fp32"): None, **selected_targets(request)}
    out: dict[str, dict[str, Any]] = {}
    for name, base in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        config = parse_config({**base, "target": [{"name": t, "precision": p} for t, p in wanted]}, folder)
        out[name] = {r.target.key: r for r in build(config, folder / "build")} if wanted else {}
        out[name]["_config"] = config
    return out


def _result(built: dict[str, dict[str, Any]], target: str, precision: str, model: str) -> Any:
    result = built[model][f"{target}-{precision}"]
    if isinstance(result.error, UnavailableError):
        pytest.skip(str(result.error))
    return result


def _reference(model: str, sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from kiln.capture.sources import load_source
    from kiln.targets.eager import TorchRunner

    config = parse_config(MODELS[model], Path("."))
    return TorchRunner(load_source(config.model, config.root).module, sig, RunOptions()).infer(inputs)


@pytest.mark.target(stage="build")
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_target_builds_and_passes_parity(built: Any, target: str, precision: str, model: str) -> None:
    result = _result(built, target, precision, model)
    assert result.error is None, f"{target}:{precision} failed: {result.error}"
    gate = result.manifest.gate
    if not gate.ran:
        pytest.skip(f"built, not run here: {gate.reason}")
    assert gate.passed, gate.breaches
    assert gate.parity is not None and gate.parity.cases >= 3  # min, opt, max of the batch dim (+ calibration)


@pytest.mark.target(stage="run")
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_artifact_round_trips_and_matches_eager_at_min_and_max(
    built: Any, target: str, precision: str, model: str
) -> None:
    result = _result(built, target, precision, model)
    folder = built[model]["_config"].root / "build" / model / f"{target}-{precision}"
    artifact = Artifact.from_manifest(folder)
    sig = artifact.signature
    report = ParityReport(tolerance_for(result.target), primary=sig.outputs[0])
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
    assert result.manifest.execution.execution_precision, "execution precision must be recorded"


@pytest.mark.target(stage="build")
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_manifest_checksums_match_files(built: Any, target: str, precision: str, model: str) -> None:
    result = _result(built, target, precision, model)
    assert result.manifest is not None, f"{target}:{precision} failed: {result.error}"
    folder = built[model]["_config"].root / "build" / model / f"{target}-{precision}"
    manifest = result.manifest
    assert manifest.files, "an artifact has files"
    for entry in manifest.files:
        assert sha256_file(folder / entry.path) == entry.sha256, entry.path
    assert manifest.signature.outputs == next(
        r.manifest.signature.outputs for k, r in built[model].items() if k != "_config" and r.manifest
    )


@pytest.mark.target("eager", stage="build")
def test_output_names_are_stable_for_nested_outputs(built: Any) -> None:
    first = next(r for k, r in built["two"].items() if k != "_config" and r.manifest)
    assert first.manifest.signature.outputs == ("logits", "extra.0", "extra.1")
