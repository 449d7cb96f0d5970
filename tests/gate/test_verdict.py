"""The generation verdict (:mod:`kiln.gate.verdict`) on a numpy step graph: what it measures, how
it names a breach, what a golden set keeps, and the golden set's round trip to the same figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.config import Tolerance
from kiln.decoding import ExplicitCache, forced, generate, perplexity
from kiln.errors import ConfigError
from kiln.gate import golden
from kiln.gate.verdict import EagerGeneration, GenerationCase, Heldout, measure, prompt_passes
from kiln.manifest import GoldenRecord
from tests.gate.steps import NextTokenRunner, step_signature

FP32 = Tolerance(exact_tokens=True, min_cosine=0.999, min_top1=0.9, max_perplexity_increase=0.01)


def _eager(prompts: list[list[int]], new_tokens: int = 3) -> EagerGeneration:
    sig = step_signature(8)
    session = ExplicitCache(NextTokenRunner(sig), sig)
    cases = []
    for i, ids in enumerate(prompts):
        tokens = list(generate(session, ids, new_tokens))
        cases.append(GenerationCase(f"prompt {i}", f"seeded ids {i}", ids, tokens, forced(session, ids, tokens)))
    heldout = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    return EagerGeneration(cases, Heldout(heldout, perplexity(session, heldout)))


def _session() -> ExplicitCache:
    sig = step_signature(8)
    return ExplicitCache(NextTokenRunner(sig), sig)


def test_the_same_model_passes_with_exact_figures() -> None:
    result = measure(_session(), _eager([[1, 2], [5]]), FP32, "generation")
    assert result.passed and result.breaches == [] and result.exact and result.first_divergence is None
    assert result.forced_top1 == 1.0 and result.token_agreement == 1.0 and result.min_cosine == pytest.approx(1.0)
    assert result.perplexity_increase == pytest.approx(0.0) and result.heldout_tokens == 12
    assert result.worst == "tokens exact, ppl +0.00%, cos 1.00000"


def test_a_breach_names_its_prompt_and_the_figures_over_all_prompts_name_none() -> None:
    eager = _eager([[1, 2], [5]])
    edited = GenerationCase("case1", "edited", [5], [7, 8, 9], eager.cases[1].logits)  # eager said 6 7 8
    result = measure(_session(), EagerGeneration([eager.cases[0], edited], eager.heldout), FP32, "golden")
    assert not result.passed and result.first_divergence == 0 and result.forced_top1 == pytest.approx(4 / 6)
    assert result.breaches[0] == (
        "golden case1 ('edited'): greedy tokens differ from eager's from step 0 "
        "(exact_tokens = false lets a precision diverge)"
    )
    assert result.breaches[1].startswith("golden case1 ('edited'): logits cosine ")
    assert result.breaches[2] == "golden: next-token agreement 0.667 < 0.9 (min_top1 = 0.667 would pass)"
    assert [prompt_passes(p, FP32) for p in result.per_prompt] == [True, False]
    # A prompt that passes exact tokens and cosine still fails a golden set on its own top-1.
    loose = Tolerance(min_top1=0.9)
    assert not prompt_passes(result.per_prompt[1], loose) and prompt_passes(result.per_prompt[1], Tolerance())


def test_a_golden_set_replays_to_the_gate_figures(tmp_path: Path) -> None:
    eager = _eager([[1, 2], [5], [3, 4, 5]])
    gate = measure(_session(), eager, FP32, "generation")
    record = golden.write_prompts(tmp_path, eager, gate, golden.GateSetup(FP32))
    assert record.screened and record.cases == 3 and record.kinds == ["prompts"]
    replay = golden.check(tmp_path, step_signature(8), record, NextTokenRunner(step_signature(8)))
    assert replay.breaches == [] and replay.generation is not None
    same = replay.generation.model_dump(exclude={"per_prompt"})
    assert same == gate.model_dump(exclude={"per_prompt"})
    assert [p.tokens for p in replay.generation.per_prompt] == [p.tokens for p in gate.per_prompt]


def test_a_golden_set_of_another_schema_asks_for_a_rebuild(tmp_path: Path) -> None:
    eager = _eager([[1, 2]])
    record: GoldenRecord = golden.write_prompts(tmp_path, eager, None, golden.GateSetup(FP32))
    index = tmp_path / golden.GOLDEN / golden.INDEX
    index.write_text(json.dumps({**json.loads(index.read_text()), "schema_id": "kiln.gate.golden/1"}))
    with pytest.raises(ConfigError, match=r"reads 'kiln.gate.golden/2'; rebuild the artifact"):
        golden.check(tmp_path, step_signature(8), record, NextTokenRunner(step_signature(8)))


def test_edited_tokens_that_no_longer_match_their_logits_are_refused(tmp_path: Path) -> None:
    record = golden.write_prompts(tmp_path, _eager([[1, 2]]), None, golden.GateSetup(FP32))
    path = tmp_path / golden.GOLDEN / golden.EXPECTED
    with np.load(path) as stored:
        expected = {k: stored[k] for k in stored.files}
    expected["case0/tokens"] = expected["case0/tokens"][:2]
    np.savez(path, **expected)
    with pytest.raises(ConfigError, match="golden case0: 2 tokens and logits of shape"):
        golden.check(tmp_path, step_signature(8), record, NextTokenRunner(step_signature(8)))
