"""CONTRIBUTING.md's promise: a target is one module plus one registry row, and the conformance
suite picks it up with no other edit."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_conformance_suite_picks_up_a_toy_target_from_a_test_only_module(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the plugin is imported as tests.targets.toy_target
    result = pytester.runpytest_subprocess(
        "-p",
        "tests.targets.toy_target",
        "-k",
        "toy",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(ROOT),
        str(ROOT / "tests" / "targets" / "test_conformance.py"),
    )
    outcomes = result.parseoutcomes()
    # fp32: builds, passes parity, round-trips, checksums, for both models; broken: strict xfail.
    assert outcomes.get("passed") == 6, result.stdout.str()[-3000:]
    assert outcomes.get("xfailed") == 6, result.stdout.str()[-3000:]
    assert "failed" not in outcomes, result.stdout.str()[-3000:]
