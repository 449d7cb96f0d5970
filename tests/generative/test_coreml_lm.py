"""Core ML for causal LMs: the stateful form (KV cache as Core ML state) converts here, is gated by
its PyTorch simulation, and decodes through Core ML's own state on macOS."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="needs coremltools: pip install 'kiln[coreml]'")
torch = pytest.importorskip("torch")

from kiln.capture.exporters import ExportBundle  # noqa: E402
from kiln.config import ModelConfig, TargetConfig  # noqa: E402
from kiln.decoding import ExplicitCache, forced, generate, session_for  # noqa: E402
from kiln.errors import ConfigError  # noqa: E402
from kiln.spec import Signature  # noqa: E402
from kiln.targets import target_options, tolerance_for  # noqa: E402
from kiln.targets.base import CompileContext, RunOptions  # noqa: E402
from kiln.targets.coreml import TARGET, cache_form  # noqa: E402
from kiln.targets.coreml.compress import parse_settings  # noqa: E402
from kiln.targets.coreml.stateful import (  # noqa: E402
    STATE,
    StateSession,
    batch_one,
    math_attention,
    stateful_step,
)
from kiln.targets.eager import TorchRunner  # noqa: E402
from tests.conftest import write_config  # noqa: E402
from tests.generative.models import tiny_gpt2_folder, tiny_llama_folder  # noqa: E402

ON_MAC = platform.system() == "Darwin"
PROMPT = [0, 17, 42, 99, 5, 230, 61, 8, 150, 77, 12]
FLOAT16, FLOAT32, INT32 = 65552, 65568, 131104  # ArrayFeatureType data types in the Core ML spec


def step_bundle(folder: Path, tmp: Path) -> ExportBundle:
    """A tiny causal LM's step graph, captured as kiln captures it (no ONNX: Core ML takes the program)."""
    from kiln.capture.causal import load_causal_lm
    from kiln.capture.exporters.torch_export import capture, example_inputs

    loaded = load_causal_lm(folder, ModelConfig(name="lm", source=f"hf:{folder}"), None, None)
    args = example_inputs(loaded.signature, loaded.example)
    program = capture(loaded.module, args, loaded.signature, strict=False)
    out = tmp / "export"
    out.mkdir()
    return ExportBundle(out, loaded.signature, "hf", _program=program)


def compile_lm(bundle: ExportBundle, tmp: Path, precision: str, **options: Any) -> tuple[Any, CompileContext]:
    out = tmp / f"coreml-{precision}-{len(list(tmp.iterdir()))}"
    out.mkdir()
    target = TargetConfig(name="coreml", precision=precision, options=options)
    ctx = CompileContext(bundle, target, target_options(target), out, tolerance_for(target))
    return TARGET.compile(ctx), ctx


def eager_session(bundle: ExportBundle) -> ExplicitCache:
    return ExplicitCache(TorchRunner(bundle.program().module(), bundle.signature, RunOptions()), bundle.signature)


def spec_of(artifact: Any) -> Any:
    import coremltools as ct

    return ct.models.MLModel(str(artifact.main), skip_model_load=True).get_spec()


def _signature(layers: int = 1) -> Signature:
    from kiln.capture.causal import step_signature
    from kiln.spec import CacheSpec

    cache = CacheSpec(layers=layers, kv_heads=1, head_dim=2, vocab_size=10, max_positions=64)
    return step_signature(cache, ModelConfig(name="m", source="x.py:f"))


# the form's settings: fast, nothing converted


def test_cache_form_defaults_to_state_on_ios18_when_a_causal_lm() -> None:
    settings = cache_form(
        parse_settings(
            TargetConfig(name="coreml", precision="fp16"), target_options(TargetConfig(name="coreml", precision="fp16"))
        ),
        _signature(),
    )
    assert (settings.kv_cache, settings.deployment_target) == ("state", "iOS18")


def test_cache_form_raises_config_error_when_state_on_ios17() -> None:
    target = TargetConfig(name="coreml", precision="fp16", options={"minimum_deployment_target": "iOS17"})
    with pytest.raises(ConfigError, match="stateful KV cache needs minimum_deployment_target iOS18"):
        cache_form(parse_settings(target, target_options(target)), _signature())


def test_cache_form_raises_config_error_when_not_a_causal_lm() -> None:
    from kiln.config import DimSpec, InputSpec

    target = TargetConfig(name="coreml", precision="fp16", options={"kv_cache": "explicit"})
    sig = Signature((InputSpec(name="x", shape=["batch", 4]),), {"batch": DimSpec(min=1, opt=1, max=4)})
    with pytest.raises(ConfigError, match="kv_cache applies to causal LMs"):
        cache_form(parse_settings(target, target_options(target)), sig)


def test_one_by_one_feeds_rows_without_the_mask_and_refuses_padding() -> None:
    from kiln.targets.coreml import one_by_one

    fed: list[dict[str, np.ndarray]] = []

    def predict(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fed.append(feed)
        return {"logits": feed["input_ids"] * 10.0, "present.0.key": feed["past.0.key"] + 1.0}

    ids = np.array([[1, 2], [3, 4], [5, 6]])
    inputs = {
        "input_ids": ids,
        "attention_mask": np.ones((3, 5), np.int64),
        "position_ids": np.array([[3, 4]] * 3),
        "past.0.key": np.arange(3 * 6, dtype=np.float32).reshape(3, 1, 3, 2),
    }
    out = one_by_one(predict, inputs)
    assert [sorted(f) for f in fed] == [["input_ids", "past.0.key", "position_ids"]] * 3
    assert all(f["input_ids"].shape == (1, 2) for f in fed)
    np.testing.assert_array_equal(out["logits"], ids * 10.0)
    np.testing.assert_array_equal(out["present.0.key"], inputs["past.0.key"] + 1.0)
    inputs["attention_mask"][1, 0] = 0
    with pytest.raises(ConfigError, match="one sequence without padding"):
        one_by_one(predict, inputs)


# the stateful module in PyTorch: the same logits as the explicit step graph


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [tiny_llama_folder, tiny_gpt2_folder],
    ids=["llama", "gpt2"],
)
def test_stateful_step_matches_the_step_graph_when_prefilled_in_chunks(tmp_path: Path, make: Any) -> None:
    bundle = step_bundle(make(tmp_path / "lm"), tmp_path)
    sig = bundle.signature
    assert sig.cache is not None
    ids = torch.randint(0, sig.cache.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    empty = [torch.zeros(1, sig.cache.kv_heads, 0, sig.cache.head_dim)] * len(sig.cache.past_names)
    with torch.no_grad():
        mask = (torch.ones(1, 40, dtype=torch.int64),) if sig.cache.attention_mask else ()
        expected = bundle.program().module()(ids, *mask, torch.arange(40)[None], *empty)["logits"]
        # As the target converts it: the step graph at batch 1, its mask of ones made inside.
        program, single = batch_one(bundle.program(), sig)
        assert single.input_names == ["input_ids", "position_ids", *sig.cache.past_names]
        module = stateful_step(math_attention(program).module(), single)
        chunks = [module(ids[:, a:b], torch.arange(a, b)[None]) for a, b in ((0, 12), (12, 13), (13, 30), (30, 40))]
        got = torch.cat(chunks, 1)
        # A shorter sequence over the longer one's state: the stale positions are masked.
        getattr(module, STATE).zero_()
        module(ids[:, :30], torch.arange(30)[None])
        again = module(ids[:, :5], torch.arange(5)[None])
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) < 1e-3 * scale  # the cache is stored fp16
    assert float((again - expected[:, :5]).abs().max()) < 1e-3 * scale


# conversion: the package's inputs, outputs and state, and the gate's simulation


@pytest.mark.target("coreml", stage="build")
def test_compile_writes_a_stateful_package_when_a_causal_lm(tmp_path: Path) -> None:
    bundle = step_bundle(tiny_llama_folder(tmp_path / "lm"), tmp_path)
    sig = bundle.signature
    assert sig.cache is not None
    artifact, ctx = compile_lm(bundle, tmp_path, "fp16")
    spec = spec_of(artifact)
    description = spec.description
    assert spec.specificationVersion >= 9  # iOS18 / macOS15: the first with states
    assert [i.name for i in description.input] == ["input_ids", "position_ids"]
    for inp in description.input:
        assert inp.type.multiArrayType.dataType == INT32
        sizes = inp.type.multiArrayType.shapeRange.sizeRanges
        assert [(s.lowerBound, s.upperBound) for s in sizes] == [(1, 1), (1, 126)]  # context 128, less 2
    assert [o.name for o in description.output] == ["logits"]
    assert description.output[0].type.multiArrayType.dataType == FLOAT32
    (state,) = description.state
    context = sig.context_length()
    assert state.name == STATE
    assert list(state.type.stateType.arrayType.shape) == [2 * sig.cache.layers, sig.cache.kv_heads, context, 16]
    assert state.type.stateType.arrayType.dataType == FLOAT16
    info = artifact.info
    assert info.minimum_deployment_target == "iOS18"
    assert info.kv_cache["form"] == "state" and info.kv_cache["states"] == {STATE: [4, 2, context, 16]}
    assert info.weights["worst_max_rel"] < 1e-3 and info.weights["unmatched"] == []
    # The gate's runner: the stateful step in PyTorch, fp16 weights, activations and cache.
    runner = TARGET.simulated_runner(artifact, ctx)
    assert runner is not None and "fp16 cache" in info.simulation
    session = session_for(runner, sig)
    assert isinstance(session, StateSession)
    eager = eager_session(bundle)
    tokens = list(generate(eager, PROMPT, 12))
    assert list(generate(session, PROMPT, 12)) == tokens
    logits, reference = forced(session, PROMPT, tokens), forced(eager, PROMPT, tokens)
    cosine = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() > 0.999
    # The explicit step contract still holds: past in, present out.
    past = np.random.default_rng(0).standard_normal((1, 2, 7, 16)).astype(np.float32)
    inputs = {"input_ids": np.array([[5, 6, 7]]), "position_ids": np.array([[7, 8, 9]])}
    inputs |= dict.fromkeys(sig.cache.past_names, past)
    inputs["attention_mask"] = np.ones((1, 10), np.int64)  # the eager step's; the package makes its own
    got, expected = runner.infer(inputs), eager.runner.infer(inputs)
    assert got["present.1.value"].shape == (1, 2, 10, 16)
    np.testing.assert_allclose(got["present.1.value"], expected["present.1.value"], atol=5e-3)
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=2e-2)


@pytest.mark.target("coreml", stage="build")
def test_compile_writes_the_explicit_cache_graph_when_asked(tmp_path: Path) -> None:
    bundle = step_bundle(tiny_llama_folder(tmp_path / "lm"), tmp_path)
    artifact, _ = compile_lm(bundle, tmp_path, "fp32", kv_cache="explicit")
    description = spec_of(artifact).description
    assert not description.state
    names = [i.name for i in description.input]
    assert names == [
        "input_ids",
        "position_ids",
        "past_0_key",
        "past_0_value",
        "past_1_key",
        "past_1_value",
    ]
    ids = description.input[0].type.multiArrayType.shapeRange.sizeRanges
    assert [(s.lowerBound, s.upperBound) for s in ids] == [(1, 1), (1, 128)]  # batch 1: one sequence
    past = description.input[2].type.multiArrayType.shapeRange.sizeRanges[2]
    assert (past.lowerBound, past.upperBound) == (0, 127)  # the prefill's empty past: unverified on Core ML
    assert artifact.info.renamed_inputs["past.0.key"] == "past_0_key"
    assert artifact.info.renamed_outputs["present.1.value"] == "present_1_value"
    assert artifact.info.kv_cache["form"] == "explicit" and artifact.info.minimum_deployment_target == "iOS17"
    assert artifact.info.kv_cache["inputs"] == ["input_ids", "position_ids", *bundle.signature.cache.past_names]


@pytest.mark.target("coreml", stage="build")
def test_build_gates_the_stateful_package_by_simulation_with_exact_tokens(tmp_path: Path) -> None:
    import json

    from kiln.config import load_config
    from kiln.pipeline.build import build

    tiny_llama_folder(tmp_path / "llama")
    data = {
        "model": {"name": "lm", "source": "hf:llama"},
        "generation": {"new_tokens": 8, "heldout_tokens": 64},
        "target": [{"name": "coreml", "precision": "fp32"}],
    }
    (result,) = build(load_config(write_config(tmp_path, data)), tmp_path / "build")
    assert result.status == "built", result.error
    folder = tmp_path / "build" / "lm" / "coreml-fp32"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["execution"]["kv_cache"]["form"] == "state"
    assert (folder / "model.mlpackage" / "Manifest.json").is_file()
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    gate = manifest["gate"]
    assert gate["simulated"] is (not ON_MAC)
    assert gate["passed"], gate["breaches"]
    assert gate["generation"]["exact"] and gate["generation"]["forced_top1"] == 1.0


# on macOS: Core ML's own state


@pytest.mark.target("coreml", stage="run")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_prediction_decodes_like_eager_through_core_ml_state_on_macos(tmp_path: Path, precision: str) -> None:
    bundle = step_bundle(tiny_llama_folder(tmp_path / "lm"), tmp_path)
    artifact, _ = compile_lm(bundle, tmp_path, precision)
    eager = eager_session(bundle)
    tokens = list(generate(eager, PROMPT, 12))
    with TARGET.load(artifact, RunOptions()) as runner:
        session = session_for(runner, bundle.signature)
        assert isinstance(session, StateSession)
        got = list(generate(session, PROMPT, 12))
        logits = forced(session, PROMPT, tokens)
    if precision == "fp32":
        assert got == tokens
    reference = forced(eager, PROMPT, tokens)
    cosine = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() > (0.9999 if precision == "fp32" else 0.99)
