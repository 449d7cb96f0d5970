"""ExecuTorch's LLM form on the trained tiny Llama: a static KV cache in the .pte, updated in place by
ExecuTorch's custom ops, fp32 and 8da4w (``int4-dynamic``) on XNNPACK, each gated on tokens and
perplexity; the metadata methods and ``tokenizer.json`` that ExecuTorch's own ``TextLLMRunner``
reads, and that runner's greedy text equal to kiln's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiln.config import parse_config
from kiln.decoding import ContextError, Tokenizer, generate, session_for
from kiln.pipeline.build import build
from kiln.targets import implementation
from kiln.targets.base import Artifact, RunOptions
from tests.conftest import selected_targets
from tests.generative.models import stdlib_llama_folder

NEW_TOKENS = 8
SEQUENCE, CONTEXT = 8, 32


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    wanted = selected_targets(request)
    folder = tmp_path_factory.mktemp("lm")
    stdlib_llama_folder(folder / "model")
    data = {
        "model": {
            "name": "lm",
            "source": "hf:model",
            "dims": {"sequence": {"min": 1, "max": SEQUENCE}, "past": {"min": 0, "max": CONTEXT - 1}},
        },
        "generation": {"new_tokens": NEW_TOKENS, "heldout_tokens": 64},
        "target": [{"name": t, "precision": p} for t, p in wanted],
    }
    results = {r.target.key: r for r in build(parse_config(data, folder), folder / "build")} if wanted else {}
    return {"results": results, "root": folder}


def _built(built: dict[str, Any], precision: str) -> tuple[Any, Path]:
    result = built["results"][f"executorch-{precision}"]
    assert result.error is None, f"executorch:{precision} failed: {result.error}"
    return result.manifest, built["root"] / "build" / "lm" / f"executorch-{precision}"


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("executorch", "fp32")])
def test_fp32_static_cache_pte_generates_eager_s_tokens_exactly(built: Any, target: str, precision: str) -> None:
    manifest, folder = _built(built, precision)
    gate = manifest.gate
    assert gate.passed, gate.breaches
    assert gate.generation.exact and gate.generation.token_agreement == 1.0
    assert all(p.tokens == p.eager_tokens for p in gate.generation.per_prompt)
    assert abs(gate.generation.perplexity_increase) < 1e-4
    llm = manifest.execution.get("llm")
    assert llm["max_context_len"] == CONTEXT and llm["max_seq_len"] == SEQUENCE
    assert llm["attention"].startswith("llama::custom_sdpa + llama::update_cache")
    assert (folder / "model.pte").is_file() and (folder / "tokenizer.json").is_file()
    # A fresh runner decodes the gate's first prompt to the gate's tokens; the ops ran in place.
    artifact = Artifact.from_manifest(folder)
    first = gate.generation.per_prompt[0]
    with implementation(target).load(artifact, RunOptions(threads=1)) as runner:
        session = session_for(runner, artifact.signature)
        assert list(generate(session, first.prompt_ids, NEW_TOKENS)) == first.tokens
        assert list(generate(session, first.prompt_ids, NEW_TOKENS)) == first.tokens  # a second sequence, same cache
        session.close()


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("executorch", "int4-dynamic")])
def test_8da4w_passes_the_generation_gate_and_records_its_scheme(built: Any, target: str, precision: str) -> None:
    manifest, _ = _built(built, precision)
    gate = manifest.gate
    assert gate.passed, gate.breaches
    assert gate.generation.forced_top1 >= 0.9 and gate.generation.perplexity_increase < 0.1
    quantization = manifest.execution.quantization
    assert quantization["scheme"] == "8da4w" and quantization["left_float"] == {}
    assert "groups of 128" in quantization["weights"]  # the stdlib Llama's widths (128, 256) take 128
    fp32 = built["results"].get("executorch-fp32")
    if fp32 is not None and fp32.manifest is not None:
        assert manifest.execution.get("pte_bytes") < fp32.manifest.execution.get("pte_bytes") / 2


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("executorch", "fp32")])
def test_metadata_methods_are_what_executorch_s_llm_runner_reads(built: Any, target: str, precision: str) -> None:
    manifest, folder = _built(built, precision)
    artifact = Artifact.from_manifest(folder)
    cache = artifact.signature.cache
    with implementation(target).load(artifact, RunOptions(threads=1)) as runner:
        values = runner.metadata()
    assert values == {
        "get_max_seq_len": SEQUENCE,
        "get_max_context_len": CONTEXT,
        "get_vocab_size": cache.vocab_size,
        "get_n_layers": cache.layers,
        "get_bos_id": cache.bos_token_id,
        "get_eos_ids": list(Tokenizer(folder / "tokenizer").eos_ids),
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    assert manifest.execution.get("llm")["metadata"] == values


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("executorch", "fp32")])
def test_a_prompt_longer_than_the_context_is_refused_with_kiln_s_line(built: Any, target: str, precision: str) -> None:
    _, folder = _built(built, precision)
    artifact = Artifact.from_manifest(folder)
    with implementation(target).load(artifact, RunOptions(threads=1)) as runner:
        session = session_for(runner, artifact.signature)
        with pytest.raises(ContextError, match=f"this artifact's context is {CONTEXT}"):
            list(generate(session, [5] * CONTEXT, 2))
        session.close()


RUNNER = """
import json, sys
from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (its kernels, for the runner too)
from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
folder, prompt, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
runner = TextLLMRunner(folder + "/model.pte", folder + "/tokenizer.json")
pieces = []
runner.generate(prompt, GenerationConfig(echo=False, num_bos=1, max_new_tokens=new, temperature=0.0), pieces.append)
print(json.dumps("".join(pieces)))
"""


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("executorch", "fp32"), ("executorch", "int4-dynamic")])
def test_executorch_s_own_llm_runner_loads_the_artifact_and_decodes_kiln_s_text(
    built: Any, target: str, precision: str
) -> None:
    """``TextLLMRunner`` (executorch 1.5.1's Python bindings of the C++ runner) reads the .pte, its
    metadata methods and tokenizer.json, and greedy-decodes the gate's first prompt to kiln's text.
    It hands back text pieces, not ids; it adds the BOS (num_bos = 1) that this tokenizer's
    post-processor adds. In a subprocess: the runner logs from C++ and a fault stays there."""
    manifest, folder = _built(built, precision)
    first = manifest.gate.generation.per_prompt[0]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder), first.prompt, str(NEW_TOKENS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = json.loads(done.stdout.strip().splitlines()[-1])
    assert text == Tokenizer(folder / "tokenizer").decode(first.tokens)


@pytest.mark.target("executorch", stage="prepare")
@pytest.mark.parametrize("custom", [True, False], ids=["custom-ops", "plain-sdpa"])
def test_static_cache_module_in_chunks_equals_the_model_on_the_whole_sequence(tmp_path: Path, custom: bool) -> None:
    """The module that is lowered, run eagerly: a prefill chunk then single tokens through the
    static cache give the logits of one pass over the whole sequence, with ExecuTorch's custom ops
    and with the plain-SDPA fallback; a second sequence overwrites the first from position 0."""
    import torch
    from transformers import AutoModelForCausalLM

    from kiln.capture.causal import cache_spec, step_signature
    from kiln.config import ModelConfig
    from kiln.targets.executorch.llm import static_module
    from tests.generative.models import tiny_llama_folder

    tiny_llama_folder(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model = ModelConfig.model_validate({"name": "lm", "source": "hf:x", "dims": {"past": {"min": 0, "max": 15}}})
    sig = step_signature(cache_spec(reference.config), model)
    module = static_module(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), sig, custom)
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = reference(ids).logits
        module(ids[:, :3].flip(1), torch.arange(3))  # a first sequence, overwritten below
        chunks = [module(ids[:, :5], torch.arange(5))]
        chunks += [module(ids[:, i : i + 1], torch.arange(i, i + 1)) for i in range(5, 9)]
    assert torch.allclose(torch.cat(chunks, 1), whole, atol=1e-5)
