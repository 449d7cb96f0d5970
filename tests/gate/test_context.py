"""One context rule (:func:`kiln.decoding.context_misfit`): a prompt of ``p`` tokens with ``n`` new
tokens needs ``p + n - 1`` positions. At the boundary the decoder, the benchmark and the gate
accept the same generation and refuse the next one with the same line (``kiln generate``: the
slow test in tests/gate/test_agreement.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bench.generation import fitting_prompts
from kiln.capture.exporters import ExportBundle
from kiln.config import BenchSettings, parse_config
from kiln.decoding import ContextError, ExplicitCache, check_context, context_misfit, forced, generate
from kiln.gate.reference import GenerationReference
from tests.bench.synthetic import manifest
from tests.gate.steps import NextTokenRunner, step_signature

CONTEXT = 8  # dims.past.max + 1
NEW = 5
FITS = CONTEXT - NEW + 1  # the longest prompt that fits with NEW new tokens


def test_the_rule_counts_every_new_token_but_the_last() -> None:
    assert context_misfit(FITS, NEW, CONTEXT) is None
    line = context_misfit(FITS + 1, NEW, CONTEXT)
    assert line is not None and "\n" not in line
    assert f"a prompt of {FITS + 1} tokens with {NEW} new tokens needs {CONTEXT + 1} positions" in line
    assert f"context is {CONTEXT} (dims.past.max + 1)" in line
    assert context_misfit(CONTEXT, 1, CONTEXT) is None and context_misfit(CONTEXT + 1, 1, CONTEXT) is not None
    with pytest.raises(ContextError) as err:
        check_context(FITS + 1, NEW, CONTEXT)
    assert str(err.value) == line


def test_the_decoder_accepts_a_prompt_that_exactly_fits_and_refuses_one_more_token() -> None:
    sig = step_signature(CONTEXT)
    session = ExplicitCache(NextTokenRunner(sig), sig)
    assert list(generate(session, list(range(FITS)), NEW)) == [FITS % 10 + i for i in range(NEW)]
    assert forced(session, list(range(FITS)), [1] * NEW).shape == (NEW, 10)
    with pytest.raises(ContextError) as err:
        list(generate(session, list(range(FITS + 1)), NEW))
    assert str(err.value) == context_misfit(FITS + 1, NEW, CONTEXT)
    with pytest.raises(ContextError) as err:
        forced(session, list(range(FITS + 1)), [1] * NEW)
    assert str(err.value) == context_misfit(FITS + 1, NEW, CONTEXT)


def test_the_benchmark_keeps_the_prompt_that_exactly_fits_and_leaves_out_one_more_token() -> None:
    built = manifest("onnxruntime-fp32", signature=step_signature(CONTEXT))
    settings = BenchSettings(prompt_tokens=[FITS, FITS + 1], new_tokens=NEW).resolve(1, True)
    fit, notes = fitting_prompts(built, settings)
    assert fit == [FITS]
    assert notes == [f"prompt of {FITS + 1} tokens left out: {context_misfit(FITS + 1, NEW, CONTEXT)}"]


def test_the_gate_fits_its_prompts_by_the_same_rule(tmp_path: Path) -> None:
    sig = step_signature(CONTEXT)
    bundle = ExportBundle(tmp_path, sig, "program")  # no tokenizer: seeded prompts of 8 ids

    def reference(new_tokens: int) -> GenerationReference:
        config = parse_config(
            {
                "model": {"name": "m", "source": "m.py:f"},
                "generation": {"new_tokens": new_tokens, "heldout_tokens": 16},
            },
            tmp_path,
        )
        return GenerationReference.compute(config, bundle, NextTokenRunner(sig))

    # The seeded prompts are cut to the longest that fits, the same as the decoder's.
    assert {len(c.ids) for c in reference(NEW).eager.cases} == {FITS}
    # Every new token fills the context: a one-token prompt still fits; one more new token does not.
    assert {len(c.ids) for c in reference(CONTEXT).eager.cases} == {1}
    with pytest.raises(ContextError) as err:
        reference(CONTEXT + 1)
    assert str(err.value) == f"[generation].new_tokens = {CONTEXT + 1}: {context_misfit(1, CONTEXT + 1, CONTEXT)}"
