"""A causal LM's generation gate takes the LM bars of its precision (kiln.targets.rows.LM_BARS)
in place of the precision's own, and the config's overrides still apply on top."""

from __future__ import annotations

from kiln.config import TargetConfig, Tolerance
from kiln.targets import tolerance_for
from kiln.targets.rows import INT4, INT8, INT8_LM, LM_BARS


def test_int8_of_a_causal_lm_is_judged_by_the_lm_bars() -> None:
    target = TargetConfig(name="onnxruntime", precision="int8-dynamic")
    assert tolerance_for(target) == INT8
    assert tolerance_for(target, generative=True) == INT8_LM
    assert INT8_LM.min_cosine < INT8.min_cosine and INT8_LM.min_top1 < INT8.min_top1
    # What the config asks for wins over either default.
    strict = TargetConfig(name="onnxruntime", precision="int8-dynamic", tolerance=Tolerance(min_top1=0.99))
    assert tolerance_for(strict, generative=True) == INT8_LM.model_copy(update={"min_top1": 0.99})


def test_precisions_without_lm_bars_keep_their_own() -> None:
    assert "int4" not in LM_BARS
    assert tolerance_for(TargetConfig(name="openvino", precision="int4"), generative=True) == INT4
