"""A causal LM's logits judged on a tolerance scaled to their magnitude and vocabulary
(:func:`kiln.parity.scaled_rel`): fp32-rounding-sized noise on a real vocabulary's logits passes
fp32's bar, logits moved by a perturbed weight fail it (where the cosine alone would not), and the
generation verdict gates it teacher-forced on an fp32 artifact only."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.config import Tolerance
from kiln.decoding import ExplicitCache
from kiln.gate.verdict import measure
from kiln.parity import row_cosines, scaled_rel
from kiln.spec import Arrays
from kiln.targets import FP32, INT8_WEIGHTS
from tests.gate.steps import NextTokenRunner, step_signature
from tests.gate.test_verdict import _eager

VOCAB = 49_152  # SmolLM2's


def _lm_rows(rows: int = 8, seed: int = 0) -> np.ndarray:
    """Float32 logits rows shaped like SmolLM2-135M's over its 49 k vocabulary (measured on its
    teacher-forced gate prompts: mean -2..4, std ~3.2, a top logit of 18-25, 3.5x the row's rms)."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(rng.uniform(-2, 4, (rows, 1)), 3.2, (rows, VOCAB))
    ref[:, :3] = rng.uniform(18, 25, (rows, 3))
    return ref.astype(np.float32)


def _noisy(ref: np.ndarray, relative: float, seed: int = 1) -> np.ndarray:
    """``ref`` plus Gaussian noise of ``relative`` times each row's rms."""
    rms = np.sqrt((ref.astype(np.float64) ** 2).mean(-1, keepdims=True))
    noise = np.random.default_rng(seed).standard_normal(ref.shape) * relative * rms
    return (ref + noise).astype(np.float32)


def test_fp32_rounding_on_a_real_vocabulary_passes_fp32_s_bar() -> None:
    ref = _lm_rows()
    # SmolLM2's fp32 artifacts read 2.5e-6 to 3.8e-6 teacher-forced: 1e-5 of the rms is above that.
    got = _noisy(ref, 1e-5)
    assert FP32.max_rel is not None and scaled_rel(got, ref) < FP32.max_rel / 5
    assert scaled_rel(ref, ref) == 0.0


def test_logits_moved_by_a_perturbed_weight_fail_fp32_s_bar_where_cosine_alone_passes() -> None:
    ref = _lm_rows()
    # 0.1 % of each logit: what 0.1 % noise on one matrix of one layer does to a small model's.
    rng = np.random.default_rng(2)
    got = (ref * (1 + 1e-3 * rng.standard_normal(ref.shape))).astype(np.float32)
    assert FP32.max_rel is not None and scaled_rel(got, ref) > 10 * FP32.max_rel
    assert FP32.min_cosine is not None and row_cosines(got, ref).min() > FP32.min_cosine


def test_the_scale_follows_the_row_s_magnitude_and_the_vocabulary() -> None:
    ref = _lm_rows(rows=2)
    got = _noisy(ref, 1e-5)
    # Ten times the logits and their difference: the same figure.
    assert scaled_rel(10 * got, 10 * ref) == pytest.approx(scaled_rel(got, ref), rel=1e-3)
    # The largest of 384 errors of one size is smaller than the largest of 49 k: the figure is not.
    small_ref = ref[:, :384]
    small = scaled_rel(_noisy(small_ref, 1e-5), small_ref)
    assert 0.5 < small / scaled_rel(got, ref) < 2


def test_non_finite_or_zero_rows_read_infinite() -> None:
    ref = _lm_rows(rows=2)
    got = ref.copy()
    got[1, 5] = np.nan
    assert scaled_rel(got, ref) == np.inf
    zeros = np.zeros((1, 8), np.float32)
    assert scaled_rel(zeros + 1, zeros) == np.inf and scaled_rel(zeros, zeros) == 0.0


class Shifted(NextTokenRunner):
    """The numpy step graph with a fixed shift on every logit of one token: a small fault."""

    def __init__(self, shift: float) -> None:
        super().__init__(step_signature(8))
        self.shift = shift

    def infer(self, inputs: Arrays) -> Arrays:
        out = super().infer(inputs)
        out["logits"][..., 3] += self.shift
        return out


def _measure(shift: float, tolerance: Tolerance):
    runner = Shifted(shift)
    return measure(ExplicitCache(runner, runner.sig), _eager([[1, 2], [5]]), tolerance, "generation")


def test_the_generation_verdict_gates_the_scaled_figure_on_fp32_only() -> None:
    exact = _measure(1e-6, FP32)
    assert exact.passed and exact.scaled_rel is not None and 0 < exact.scaled_rel < 1e-5
    # Tokens, cosine and perplexity stay within fp32's bars; the logits do not.
    fault = _measure(0.01, FP32)
    assert fault.exact and fault.min_cosine > 0.99999 and not fault.passed
    assert fault.breaches[0].startswith("generation prompt 0 ('seeded ids 0'): teacher-forced logits scaled_rel ")
    assert fault.breaches[0].endswith(f"> tolerance 0.0001 (max_rel = {fault.scaled_rel:.3g} would pass)")
    # A precision that need not reproduce eager's tokens records it only.
    assert _measure(0.01, INT8_WEIGHTS).passed
