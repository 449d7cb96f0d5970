"""A causal LM's generation gate takes the LM bars (kiln.targets.rows.LM_BARS) in place of its
precision's own, and the config's overrides still apply on top."""

from __future__ import annotations

from kiln.config import TargetConfig, Tolerance
from kiln.targets import tolerance_for
from kiln.targets.rows import FP32, INT4, INT4_LM, INT8, INT8_LM


def test_int8_of_a_causal_lm_is_judged_by_the_lm_bars() -> None:
    target = TargetConfig(name="onnxruntime", precision="int8-dynamic")
    assert tolerance_for(target) == INT8
    assert tolerance_for(target, generative=True) == INT8_LM
    assert INT8_LM.min_cosine < INT8.min_cosine and INT8_LM.min_top1 < INT8.min_top1
    # What the config asks for wins over either default.
    strict = TargetConfig(name="onnxruntime", precision="int8-dynamic", tolerance=Tolerance(min_top1=0.99))
    assert tolerance_for(strict, generative=True) == INT8_LM.model_copy(update={"min_top1": 0.99})


def test_int4_of_a_causal_lm_gates_its_worst_step_lower_and_the_rest_as_before() -> None:
    target = TargetConfig(name="openvino", precision="int4")
    assert tolerance_for(target) == INT4
    lm = tolerance_for(target, generative=True)
    assert lm == INT4_LM and lm.min_cosine < INT4.min_cosine
    assert (lm.min_top1, lm.max_perplexity_increase) == (INT4.min_top1, INT4.max_perplexity_increase)


def test_precisions_without_lm_bars_keep_their_own() -> None:
    assert tolerance_for(TargetConfig(name="onnxruntime", precision="fp32"), generative=True) == FP32


def test_every_precision_with_int4_or_int8_defaults_gets_the_lm_bars() -> None:
    for name, precision in (("aoti", "int4-weights"), ("coreml", "palettize4"), ("executorch", "int8-dynamic")):
        lm = tolerance_for(TargetConfig(name=name, precision=precision), generative=True)
        assert lm in (INT4_LM, INT8_LM), (name, precision)


def test_half_precision_lms_allow_one_flipped_step_in_twenty() -> None:
    for precision in ("fp16", "bf16"):
        own = tolerance_for(TargetConfig(name="openvino", precision=precision))
        lm = tolerance_for(TargetConfig(name="openvino", precision=precision), generative=True)
        assert lm.min_top1 == 0.95 < own.min_top1
        assert (lm.min_cosine, lm.max_perplexity_increase) == (own.min_cosine, own.max_perplexity_increase)
