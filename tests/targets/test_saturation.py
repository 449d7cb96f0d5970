"""int8 on CPUs whose u8 x s8 kernels saturate (x86 without VNNI): the detection, the option that
overrides it, and the builds it changes.

On a saturating host the builds show the remedy is needed and works: with the fix off (the
vendor's default), the two-layer MLP's int8 artifact breaches the parity gate; with kiln's default
it passes. On a VNNI or ARM host that half is skipped, and the default must not lose a weight bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.config import parse_config
from kiln.pipeline.build import build
from kiln.quant import saturation
from kiln.quant.saturation import decide, host_saturates, saturates
from kiln.targets import availability
from tests.conftest import TWO


@pytest.mark.parametrize(
    ("flags", "arch", "expected"),
    [
        (["sse4_2", "avx2", "fma"], "x86_64", True),
        (["avx2", "avx512f", "avx512bw"], "x86_64", True),  # AVX-512 without VNNI still saturates
        (["avx2", "avx512f", "avx512_vnni"], "x86_64", False),
        (["avx2", "avx_vnni"], "x86_64", False),
        (["avx2", "amx_tile", "amx_int8"], "x86_64", False),
        (["avx2"], "AMD64", True),
        (["asimd", "asimddp"], "aarch64", False),
        ([], "arm64", False),
    ],
)
def test_saturation_follows_the_isa(flags: list[str], arch: str, expected: bool) -> None:
    assert saturates(flags, arch) is expected


def test_an_option_overrides_the_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saturation, "host_saturates", lambda: True)
    assert decide(None) == (True, saturation.REASON)
    assert decide(False) == (False, "set in options")
    monkeypatch.setattr(saturation, "host_saturates", lambda: False)
    assert decide(None) == (False, "build host has a VNNI int8 dot product (no saturation)")
    assert decide(True) == (True, "set in options")


def _build(tmp_path: Path, name: str, target: dict[str, Any]) -> Any:
    folder = tmp_path / name
    config = parse_config({**TWO, "target": [target]}, folder)
    (result,) = build(config, folder / "build")
    assert result.error is None, result.error
    return result


CASES = [
    pytest.param("onnxruntime", "int8", "reduce_range", False, id="onnxruntime-int8"),
    pytest.param("onnxruntime", "int8-dynamic", "reduce_range", False, id="onnxruntime-int8-dynamic"),
    pytest.param("openvino", "int8", "overflow_fix", "first_layer", id="openvino-int8"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision", "option", "off"), CASES)
def test_the_default_fix_follows_the_host_and_is_what_passes_the_gate(
    tmp_path: Path, name: str, precision: str, option: str, off: object
) -> None:
    if not availability(name).build:
        pytest.skip(f"{name} is not installed here: pip install -e '.[{name}]' -c constraints.txt")
    default = _build(tmp_path, "default", {"name": name, "precision": precision})
    recorded = default.manifest.execution.get("quantization")
    applied = recorded[option] in (True, "enable")
    assert applied is host_saturates(), recorded
    assert (recorded[f"{option}_why"] == saturation.REASON) is applied
    assert default.manifest.gate.passed, default.manifest.gate.breaches
    if not host_saturates():
        pytest.skip("this host has a VNNI int8 dot product (or is not x86): nothing saturates to show")
    unfixed = _build(tmp_path, "unfixed", {"name": name, "precision": precision, "options": {option: off}})
    assert unfixed.manifest.execution.get("quantization")[f"{option}_why"] == "set in options"
    assert not unfixed.manifest.gate.passed, "the vendor default passed here: the saturation fix is not needed"
    assert any("cosine" in b for b in unfixed.manifest.gate.breaches)
