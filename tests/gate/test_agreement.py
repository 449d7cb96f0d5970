"""One verdict: ``kiln build``'s gate and ``kiln verify --run`` judge an artifact alike.

A tiny causal LM and a tiny fixed graph are built for ONNX Runtime at fp32; their golden sets hold
every case the gate ran, so the replay on the artifact gives the gate's own figures and verdict.
A golden case edited after the build (with the manifest vouching for the edit) fails both the
gate's judgement of those answers and ``verify --run``, with the same lines. The context rule's
``kiln generate`` end runs here too, on the built causal LM."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kiln.config import parse_config
from kiln.decoding import Tokenizer, context_misfit
from kiln.gate import golden
from kiln.gate.golden import EXPECTED, GOLDEN, GoldenSet, Replay
from kiln.gate.reference import GenerationReference
from kiln.manifest import Manifest
from kiln.parity import ParityReport
from kiln.ship.bundle import PackageOptions, package
from kiln.ship.verify import verify
from kiln.targets import availability, implementation
from kiln.targets.base import Artifact, Runner, RunOptions
from tests.conftest import TWO
from tests.ship.test_bundle import cli, one_error_line, rewrite_manifest

pytestmark = pytest.mark.slow

NEW_TOKENS = 6
CONTEXT = 32  # dims.past.max + 1


def _build(folder: Path, data: dict) -> Path:
    from kiln.pipeline.build import build

    if not availability("onnxruntime").run:
        pytest.skip(f"onnxruntime: {availability('onnxruntime').reason}")
    (result,) = build(parse_config({**data, "target": [{"name": "onnxruntime"}]}, folder), folder / "build")
    assert result.manifest is not None and result.manifest.gate.passed, result.error
    return folder / "build" / data["model"]["name"] / "onnxruntime-fp32"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (with its tokenizer) built for ONNX Runtime fp32; its artifact folder."""
    from tests.generative.models import tiny_llama_folder

    folder = tmp_path_factory.mktemp("lm")
    tiny_llama_folder(folder / "llama")
    model = {
        "name": "lm",
        "source": "hf:llama",
        "dims": {"sequence": {"min": 1, "max": 8}, "past": {"min": 0, "max": 31}},
    }
    return _build(folder, {"model": model, "generation": {"new_tokens": NEW_TOKENS, "heldout_tokens": 32}})


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-input fixed graph built for ONNX Runtime fp32 (no data: the seeded cases only)."""
    return _build(tmp_path_factory.mktemp("graph"), {"model": TWO["model"]})


def _open(folder: Path) -> tuple[Manifest, Runner]:
    """The artifact loaded with its runtime, as ``verify --run`` loads it."""
    manifest = Manifest.read(folder)
    return manifest, implementation(manifest.target).load(Artifact.from_manifest(folder, manifest), RunOptions())


def _replay(folder: Path) -> Replay:
    manifest, runner = _open(folder)
    assert manifest.golden is not None
    with runner:
        return golden.check(folder, manifest.signature, manifest.golden, runner)


def _gate_lines(out: str) -> list[str]:
    """What ``kiln verify --run`` said of the gate, without its ``kiln: gate: <key>:`` prefix."""
    return [line.split(": ", 3)[3] for line in out.splitlines() if line.startswith("kiln: gate:")]


def _tampered(folder: Path, into: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    """A copy of the artifact with its golden answers edited and the manifest vouching for them."""
    copy = into / folder.name
    shutil.copytree(folder, copy)
    with np.load(copy / GOLDEN / EXPECTED) as stored:
        expected = {k: stored[k] for k in stored.files}
    edit(expected)
    np.savez(copy / GOLDEN / EXPECTED, **expected)
    rewrite_manifest(copy)
    return copy


def test_the_gate_and_verify_run_reach_one_verdict_with_the_same_figures_on_a_causal_lm(
    lm: Path, tmp_path: Path
) -> None:
    gate = Manifest.read(lm).gate.generation
    assert gate is not None and gate.passed and gate.breaches == []
    assert verify(lm, tmp_path, run=True).breaches == []
    replay = _replay(lm).generation
    assert replay is not None and replay.passed == gate.passed and replay.breaches == gate.breaches
    # Every gate prompt is in the golden set (a tiny vocabulary), with the held-out text: same figures.
    exact = ("prompts", "new_tokens", "exact", "first_divergence", "token_agreement", "forced_top1", "heldout_tokens")
    assert {f: getattr(replay, f) for f in exact} == {f: getattr(gate, f) for f in exact}
    assert replay.per_prompt == gate.per_prompt
    assert replay.perplexity_eager == gate.perplexity_eager
    close = ("min_cosine", "mean_cosine", "perplexity", "perplexity_increase")
    assert {f: getattr(replay, f) for f in close} == pytest.approx({f: getattr(gate, f) for f in close}, abs=1e-5)
    assert replay.tolerance == gate.tolerance and replay.worst == gate.worst


def test_a_tampered_golden_case_fails_the_gate_and_verify_run_alike(lm: Path, tmp_path: Path) -> None:
    def next_tokens(expected: dict[str, np.ndarray]) -> None:  # eager's greedy tokens, each one on
        vocab = expected["case1/logits"].shape[1]
        expected["case1/tokens"] = (expected["case1/tokens"] + 1) % vocab

    folder = _tampered(lm, tmp_path / "build", next_tokens)
    bundle = package(folder, PackageOptions(out=tmp_path / "dist")).bundle
    code, out = cli("verify", str(bundle), "--run")
    assert code == 3, out
    said = _gate_lines(out)
    assert any(line.startswith("golden case1 (") and "greedy tokens differ" in line for line in said), out
    # The build gate's own check, judging the artifact against the same (edited) answers.
    manifest, runner = _open(folder)
    with runner:
        judged = GenerationReference(manifest.signature, GoldenSet.read(folder).eager_generation())
        gate = judged.check(runner, manifest.gate.generation.tolerance)  # type: ignore[union-attr]
    assert gate.passed is False
    assert [b.replace("generation", "golden", 1) for b in gate.breaches] == said


def test_kiln_generate_accepts_a_prompt_that_exactly_fits_and_refuses_one_more_new_token(lm: Path) -> None:
    prompt = "The quick brown fox"
    length = len(Tokenizer(lm / "tokenizer").encode(prompt))
    fits = CONTEXT - length + 1
    code, out = cli("generate", str(lm), "-p", prompt, "-n", str(fits))
    assert code == 0 and "Traceback" not in out, out
    code, out = cli("generate", str(lm), "-p", prompt, "-n", str(fits + 1))
    assert code == 2
    assert one_error_line(out) == f"kiln: error: {context_misfit(length, fits + 1, CONTEXT)}"


def test_the_gate_and_verify_run_reach_one_verdict_on_a_fixed_graph(graph: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(graph)
    gate = manifest.gate.parity
    assert gate is not None and gate.passed and manifest.golden is not None
    assert verify(graph, tmp_path, run=True).breaches == []
    replay = _replay(graph)
    assert replay.breaches == [] and replay.parity is not None and replay.parity.passed
    # The golden set holds the gate's seeded cases: the replay's figures are the gate's.
    assert replay.parity.cases == gate.cases
    for name, figures in gate.outputs.items():
        again = replay.parity.outputs[name]
        assert again.model_dump() == pytest.approx(figures.model_dump(), abs=1e-5), name

    def negated(expected: dict[str, np.ndarray]) -> None:  # eager's outputs of case 0, negated
        for key in [k for k in expected if k.startswith("case0/")]:
            expected[key] = -expected[key]

    folder = _tampered(graph, tmp_path / "build", negated)
    code, out = cli("verify", str(folder), "--run")
    said = _gate_lines(out)
    assert code == 3 and said and all(line.startswith("golden case0 (") for line in said), out
    # The gate's parity report on the same edited case fails too.
    case = GoldenSet.read(folder)
    inputs, expected = case.arrays(case.inputs, "case0"), case.arrays(case.expected, "case0")
    report = ParityReport(manifest.golden.tolerance, primary=manifest.golden.primary)
    _, runner = _open(folder)
    with runner:
        report.add_case(runner.infer(inputs), expected, inputs)
    label = case.index.cases[0].label
    assert not report.passed and [f"golden case0 ({label}): {b}" for b in report.breaches()] == said
