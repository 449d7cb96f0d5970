"""The child-process compile probe that stands between a crashing OpenVINO CPU plugin and kiln.

OpenVINO 2026.4.1's CPU plugin dies outright (SIGFPE, no exception) compiling a causal LM's stateful
IR at bf16 on some CPUs (an Intel Xeon with AMX, 1 thread), not on others (AMD EPYC with
AVX512-BF16). kiln compiles such an IR once in a child first; a death there is one line naming the
signal and the upstream issue, and kiln lives on. The crash is simulated here by a probe that
kills itself with the signal the plugin raises.
"""

from __future__ import annotations

import pytest

from kiln.errors import TargetBuildError

pytest.importorskip("openvino")

from kiln.targets import openvino as ov_target


def test_a_plugin_that_dies_fails_the_build_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(ov_target, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGFPE)")
    with pytest.raises(TargetBuildError) as raised:
        ov_target.probe_compile(tmp_path / "model.xml", "bf16", 1)
    line = str(raised.value)
    assert "\n" not in line
    assert "SIGFPE" in line and ov_target.UPSTREAM_SIGFPE in line and "openvino:fp32" in line


def test_a_plugin_that_raises_fails_the_build_with_its_last_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(ov_target, "_PROBE", "raise RuntimeError('Exception from src/plugin.cpp: no such layer')")
    with pytest.raises(TargetBuildError, match="no such layer"):
        ov_target.probe_compile(tmp_path / "model.xml", "fp16", None)


def test_a_missing_ir_is_a_child_error_not_a_crash(tmp_path) -> None:
    with pytest.raises(TargetBuildError, match="failed in a child process"):
        ov_target.probe_compile(tmp_path / "missing.xml", "bf16", 1)
