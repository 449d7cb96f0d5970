"""Causal LMs end to end: the step graph, the decode session, the generation gate, adapters,
factory sources and ``kiln generate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.config import ModelConfig, parse_config
from kiln.decoding import ContextError, ExplicitCache, Sampling, forced, generate, perplexity, pick
from kiln.spec import CacheSpec, Signature
from tests.conftest import write_config
from tests.generative.models import tiny_gpt2_folder, tiny_llama_folder, tiny_lora_adapter

KILN = [sys.executable, "-m", "kiln.cli"]


def _config(folder: Path, model: dict, targets: list[str], **extra: object) -> dict:
    return {
        "model": {"name": "lm", **model},
        "generation": {"new_tokens": 8, "heldout_tokens": 64},
        "target": [{"name": t} for t in targets],
        **extra,
    }


class CountingRunner:
    """A step graph in numpy: logits favour (last token + 1), the cache grows by the fed length."""

    def __init__(self, sig: Signature) -> None:
        self.sig, self.calls = sig, []

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = inputs["input_ids"]
        self.calls.append((ids.shape[1], inputs["past.0.key"].shape[2], inputs["position_ids"][0, 0]))
        cache = self.sig.cache
        assert cache is not None
        logits = np.zeros((1, ids.shape[1], cache.vocab_size), dtype=np.float32)
        for i, token in enumerate(ids[0]):
            logits[0, i, (token + 1) % cache.vocab_size] = 5.0
        grown = {
            q: np.concatenate([inputs[p], np.zeros((1, cache.kv_heads, ids.shape[1], cache.head_dim), np.float32)], 2)
            for p, q in zip(cache.past_names, cache.present_names, strict=True)
        }
        return {"logits": logits, **grown}


def _signature(sequence_max: int = 4, past_max: int = 15) -> Signature:
    from kiln.capture.causal import step_signature

    cache = CacheSpec(layers=1, kv_heads=1, head_dim=2, vocab_size=10, max_positions=64)
    dims = {"sequence": {"min": 1, "max": sequence_max}, "past": {"min": 0, "max": past_max}}
    return step_signature(cache, ModelConfig(name="m", source="x.py:f", dims=dims))


def test_the_session_chunks_the_prefill_and_carries_the_cache() -> None:
    sig = _signature(sequence_max=4)
    runner = CountingRunner(sig)
    session = ExplicitCache(runner, sig)
    tokens = list(generate(session, [1, 2, 3, 4, 5, 6], 3))
    assert tokens == [7, 8, 9]
    # A 6-token prompt in chunks of 4 then 2, then one token per step; positions follow the cache.
    assert runner.calls == [(4, 0, 0), (2, 4, 4), (1, 6, 6), (1, 7, 7)]


def test_the_session_refuses_what_does_not_fit_the_context() -> None:
    sig = _signature(past_max=7)  # context 8
    session = ExplicitCache(CountingRunner(sig), sig)
    with pytest.raises(ContextError, match=r"needs 10 positions .* this artifact's context is 8"):
        list(generate(session, [1, 2, 3, 4, 5, 6], 5))


def test_teacher_forcing_and_perplexity_follow_the_fed_tokens() -> None:
    sig = _signature()
    session = ExplicitCache(CountingRunner(sig), sig)
    logits = forced(session, [1, 2], [3, 4, 5])
    assert logits.argmax(axis=1).tolist() == [3, 4, 5]
    sure = perplexity(session, [1, 2, 3, 4, 5, 6])
    unsure = perplexity(session, [1, 5, 2, 8, 3, 0])
    assert 1.0 <= sure < unsure


def test_sampling_is_seeded_and_top_k_bounds_it() -> None:
    logits = np.array([0.0, 1.0, 2.0, 3.0])
    rng = np.random.default_rng(0)
    assert pick(logits, Sampling(), rng) == 3
    draws = {pick(logits, Sampling(temperature=1.0, top_k=2), np.random.default_rng(s)) for s in range(50)}
    assert draws == {2, 3}
    same = [pick(logits, Sampling(temperature=1.0), np.random.default_rng(7)) for _ in range(3)]
    assert len(set(same)) == 1


def test_only_the_past_dim_may_be_empty(tmp_path: Path) -> None:
    from kiln.errors import ConfigError

    data = {"model": {"name": "m", "source": "m.py:f", "dims": {"batch": {"min": 0, "max": 4}}}}
    with pytest.raises(ConfigError, match="only a text-generation model's 'past' dim may be empty"):
        parse_config(data, tmp_path)


@pytest.mark.slow
def test_hf_llama_builds_eager_and_onnxruntime_with_exact_tokens(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.pipeline.build import build

    tiny_llama_folder(tmp_path / "llama")
    path = write_config(tmp_path, _config(tmp_path, {"source": "hf:llama"}, ["eager", "onnxruntime"]))
    results = build(load_config(path), tmp_path / "build")
    assert [r.status for r in results] == ["built", "built"], [r.error for r in results]
    for result in results:
        manifest = result.manifest
        assert manifest is not None and manifest.gate.passed, manifest.gate.breaches if manifest else None
        gen = manifest.gate.generation
        assert gen is not None and gen.exact and gen.forced_top1 == 1.0
        assert abs(gen.perplexity_increase) < 1e-4 and gen.perplexity_eager > 1
        assert manifest.signature.cache is not None and manifest.signature.cache.kv_heads == 2
        folder = tmp_path / "build" / "lm" / manifest.key
        assert (folder / "tokenizer" / "tokenizer.json").is_file()
    # Where kiln carries the cache, the step graph is also checked at the dims' min, opt and max.
    ort = results[1].manifest
    assert ort is not None and ort.gate.parity is not None and ort.gate.parity.cases >= 3
    assert ort.gate.parity.inputs == "seeded"  # no [calibration]: the record says so


@pytest.mark.slow
def test_gpt2_lm_head_model_is_detected_as_a_causal_lm(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.pipeline.build import build

    tiny_gpt2_folder(tmp_path / "gpt2")
    path = write_config(tmp_path, _config(tmp_path, {"source": "hf:gpt2"}, ["onnxruntime"]))
    (result,) = build(load_config(path), tmp_path / "build")
    assert result.manifest is not None, result.error
    assert result.manifest.gate.passed and result.manifest.gate.generation.exact


@pytest.mark.slow
def test_an_adapter_is_merged_hashed_and_changes_the_model(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.pipeline.build import build, plan

    tiny_llama_folder(tmp_path / "llama")
    tiny_lora_adapter(tmp_path / "llama", tmp_path / "lora")
    base = write_config(tmp_path, _config(tmp_path, {"source": "hf:llama"}, ["eager"]), "base.toml")
    tuned = write_config(
        tmp_path, _config(tmp_path, {"source": "hf:llama", "adapter": "lora"}, ["eager"]), "tuned.toml"
    )
    assert plan(load_config(base), tmp_path / "a").export_key != plan(load_config(tuned), tmp_path / "a").export_key
    (b,) = build(load_config(base), tmp_path / "base")
    (t,) = build(load_config(tuned), tmp_path / "tuned")
    assert b.manifest is not None and t.manifest is not None
    assert b.manifest.adapter is None
    assert t.manifest.adapter is not None and len(t.manifest.adapter.sha256) == 64
    assert t.manifest.gate.passed  # the merged artifact reproduces the merged eager model
    eager_b = b.manifest.gate.generation.per_prompt[0].eager_tokens
    eager_t = t.manifest.gate.generation.per_prompt[0].eager_tokens
    assert eager_b != eager_t, "the adapter must change what the model generates"


@pytest.mark.slow
def test_a_list_of_adapters_gives_one_model_each(tmp_path: Path) -> None:
    from kiln.config import load_config
    from kiln.pipeline.build import build

    tiny_llama_folder(tmp_path / "llama")
    tiny_lora_adapter(tmp_path / "llama", tmp_path / "a1", seed=1)
    tiny_lora_adapter(tmp_path / "llama", tmp_path / "a2", seed=2)
    path = write_config(tmp_path, _config(tmp_path, {"source": "hf:llama", "adapter": ["a1", "a2"]}, ["eager"]))
    results = build(load_config(path), tmp_path / "build")
    assert sorted(r.manifest.model for r in results if r.manifest) == ["lm-a1", "lm-a2"]


FACTORY = """
import torch, transformers
from pathlib import Path

def lm():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.1)
    return transformers.LlamaForCausalLM(config)

class Step(torch.nn.Module):
    kiln_cache = dict(layers=1, kv_heads=1, head_dim=4, vocab_size=16, max_positions=64)

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4)
        self.out = torch.nn.Linear(4, 16)

    def forward(self, input_ids, position_ids, k, v):
        h = self.emb(input_ids)[:, None]  # [b, 1, s, 4]
        k2, v2 = torch.cat([k, h], 2), torch.cat([v, h * 2], 2)
        logits = self.out(h[:, 0] + k2.mean(2, keepdim=True)[:, 0] + position_ids[..., None].float() * 0.01)
        return logits, k2, v2

def step():
    return Step()
"""


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["lm", "step"])
def test_factories_give_causal_lms_too(tmp_path: Path, factory: str) -> None:
    from kiln.config import load_config
    from kiln.pipeline.build import build

    (tmp_path / "models.py").write_text(FACTORY)
    model = {"source": f"models.py:{factory}", "task": "text-generation"}
    path = write_config(tmp_path, _config(tmp_path, model, ["onnxruntime"]))
    (result,) = build(load_config(path), tmp_path / "build")
    assert result.manifest is not None, result.error
    gen = result.manifest.gate.generation
    assert gen is not None and gen.exact and gen.prompts == 3  # seeded prompts: no tokenizer


@pytest.mark.slow
def test_kiln_generate_streams_text_and_refuses_a_long_request(tmp_path: Path) -> None:
    tiny_llama_folder(tmp_path / "llama")
    path = write_config(tmp_path, _config(tmp_path, {"source": "hf:llama"}, ["onnxruntime"]))
    out = tmp_path / "build"
    built = subprocess.run([*KILN, "build", str(path), "--out", str(out)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    artifact = out / "lm" / "onnxruntime-fp32"
    run = subprocess.run(
        [*KILN, "generate", str(artifact), "--prompt", "The quick", "-n", "6"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("The quick") and len(run.stdout.strip()) > len("The quick")
    assert "6 tokens" in run.stderr or "tokens" in run.stderr
    sampled = [
        subprocess.run(
            [*KILN, "generate", str(artifact), "-p", "The", "-n", "6", "--temperature", "1", "--seed", "3"],
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    long = subprocess.run([*KILN, "generate", str(artifact), "-p", "x", "-n", "1000"], capture_output=True, text=True)
    assert long.returncode == 2
    assert long.stderr.count("\n") == 1 and "context" in long.stderr
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["signature"]["cache"]["layers"] == 2
