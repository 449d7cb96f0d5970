"""One digits build shared by the shipping tests (package, verify, model repository, serve).

Built once per session with the real example (examples/digits), so every test that packages or
serves an artifact starts from what ``kiln build`` really writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits" / "kiln.toml"
# What the shipping tests need: the baseline, ONNX Runtime at fp32 and static int8 (gated on real
# data), OpenVINO at fp32 (the two servers' backends).
DIGITS_TARGETS = ("eager", "onnxruntime", "onnxruntime:int8", "openvino")


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``build/digits/`` with one artifact folder per target in DIGITS_TARGETS."""
    from kiln.config import load_config, with_targets
    from kiln.pipeline.build import build
    from kiln.targets import availability

    wanted = [t for t in DIGITS_TARGETS if availability(t.split(":")[0]).build]
    if not wanted:
        pytest.skip("no digits target can build here")
    out = tmp_path_factory.mktemp("ship") / "build"
    results = build(with_targets(load_config(DIGITS), wanted), out)
    failed = [f"{r.target.key}: {r.error or r.manifest.gate.breaches}" for r in results if r.exit_code]
    assert not failed, failed
    return out / "digits"
