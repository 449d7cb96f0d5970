"""Parity figures and verdicts on synthetic outputs."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.config import TargetConfig, Tolerance
from kiln.parity import ParityReport
from kiln.targets import BF16, FP16, FP32, INT8, tolerance_for


def test_identical_outputs_pass_with_perfect_figures() -> None:
    ref = {"y": np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)}
    report = ParityReport(FP32)
    report.add_case(ref, ref)
    figures = report.outputs["y"]
    assert (figures.max_abs, figures.max_rel, figures.top1) == (0.0, 0.0, 1.0)
    assert abs(figures.cosine - 1.0) < 1e-12
    assert report.passed


def test_breach_names_output_figure_tolerance_and_what_would_pass() -> None:
    ref = np.ones((2, 4), np.float32)
    got = ref + np.array([[0, 0, 0, 0.01], [0, 0, 0, 0]], np.float32)
    report = ParityReport(FP32)
    report.add_case({"logits": got}, {"logits": ref})
    (breach,) = [b for b in report.breaches() if "max_rel" in b]
    assert breach == "output 'logits': max_rel 0.01 > tolerance 0.0001 (max_rel = 0.01 would pass)"
    assert not report.passed


def test_top1_agreement_counts_rows_whose_argmax_differs() -> None:
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 2, 0, 0]
    report = ParityReport(Tolerance(min_top1=0.9))
    report.add_case({"p": got}, {"p": ref})
    assert report.outputs["p"].top1 == 0.75
    assert any("top1 0.75 < tolerance 0.9" in b for b in report.breaches())


def test_nan_and_shape_mismatch_always_breach() -> None:
    ref = np.ones((2, 3), np.float32)
    report = ParityReport(INT8.model_copy(update={"max_abs": 1.0}))
    report.add_case({"a": np.full((2, 3), np.nan, np.float32)}, {"a": ref})
    report.add_case({"b": np.ones((3, 3), np.float32)}, {"b": ref})
    assert len(report.breaches()) >= 2


def test_overrides_replace_only_the_figures_given() -> None:
    tol = tolerance_for(TargetConfig(name="openvino", precision="bf16", tolerance=Tolerance(max_rel=0.5)))
    assert tol.max_rel == 0.5 and tol.min_cosine == BF16.min_cosine


def test_lower_precisions_are_looser() -> None:
    assert FP32.max_rel < FP16.max_rel
    assert FP16.min_cosine > INT8.min_cosine


def test_top1_is_gated_only_on_the_primary_output() -> None:
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[0] = [0, 2, 0, 0]
    report = ParityReport(Tolerance(min_top1=0.9), primary="logits")
    report.add_case({"logits": ref, "hidden": got}, {"logits": ref, "hidden": ref})
    assert report.outputs["hidden"].top1 is None  # not class scores: argmax means nothing there
    assert report.outputs["logits"].top1 == 1.0
    assert report.passed


def test_top1_never_applies_to_a_hidden_state_but_does_to_any_logits() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 8))
    noisy = hidden + 0.3 * rng.standard_normal(hidden.shape)  # argmax over features flips
    report = ParityReport(Tolerance(min_top1=0.99), primary="last_hidden_state")
    report.add_case(
        {"last_hidden_state": noisy, "start_logits": hidden}, {"last_hidden_state": hidden, "start_logits": hidden}
    )
    assert report.outputs["last_hidden_state"].top1 is None
    assert report.outputs["start_logits"].top1 == 1.0
    assert not any("top1" in b for b in report.breaches())
    marked = ParityReport(Tolerance(min_top1=0.99), primary="x", classifiers=("last_hidden_state",))
    marked.add_case({"last_hidden_state": noisy}, {"last_hidden_state": hidden})
    assert any("top1" in b for b in marked.breaches())


def test_token_outputs_are_compared_on_the_positions_the_mask_keeps() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 6, 4))
    got = ref.copy()
    got[:, 4:] = 100.0  # padded positions: free to hold anything
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    report = ParityReport(Tolerance(max_rel=1e-6, min_cosine=0.9999))
    report.add_case({"h": got}, {"h": ref}, {"attention_mask": mask, "input_ids": mask})
    assert report.passed, report.breaches()
    unmasked = ParityReport(Tolerance(max_rel=1e-6, min_cosine=0.9999))
    unmasked.add_case({"h": got}, {"h": ref})
    assert not unmasked.passed
    got[0, 1] += 1.0  # a kept position that differs is still caught
    caught = ParityReport(Tolerance(max_rel=1e-6))
    caught.add_case({"h": got}, {"h": ref}, {"attention_mask": mask})
    assert not caught.passed


def test_non_finite_outputs_are_named_and_no_infinite_tolerance_is_suggested() -> None:
    ref = np.ones((2, 3), dtype=np.float32)
    got = ref.copy()
    got[0, 0] = np.inf
    got[1, 2] = np.nan
    report = ParityReport(Tolerance(max_rel=1e-4, min_cosine=0.99))
    report.add_case({"y": got}, {"y": ref})
    (breach,) = report.breaches()
    assert "2 non-finite values (inf or nan) of 6" in breach and "another target or precision" in breach
    assert "would pass" not in breach and "= inf" not in breach


def test_one_row_cosine_serves_parity_the_metric_and_the_generation_verdict() -> None:
    from kiln.gate.verdict import cosine
    from kiln.metrics import BUILTIN
    from kiln.parity import row_cosines

    a = np.array([[1.0, 0.0], [0.0, 0.0], [np.inf, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    cos = row_cosines(a, b)
    # Agreeing zero rows are 1, a zero row against another is 0, a non-finite row scores 0.
    assert np.allclose(cos, [np.sqrt(0.5), 1.0, 0.0, 0.0])
    assert BUILTIN["cosine"](a[:2], b[:2]) == pytest.approx((np.sqrt(0.5) + 1.0) / 2)
    assert cosine(a[0], b[0]) == pytest.approx(np.sqrt(0.5))
    assert cosine(a[2], b[2]) == 0.0
