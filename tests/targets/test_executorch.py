"""ExecuTorch: what is special to the .pte target beyond the conformance suite.

Options are validated without the toolchain; the rest builds tiny models (and digits, once) with
executorch 1.5.1: a two-dynamic-dim model run at its max shape, the delegated share and the
portable-fallback flag on a model whose compute is mostly layer norms, digits int8 within the
gate, and the Core ML delegate lowered here and gated by simulation (it runs only on Apple).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.config import DimSpec, InputSpec, TargetConfig, parse_config
from kiln.errors import ConfigError, UnavailableError
from kiln.pipeline.build import build, plan
from kiln.spec import Signature, random_inputs
from kiln.targets import availability, implementation, target_options
from kiln.targets.base import Artifact, RunOptions
from kiln.targets.executorch import PortableFallbackWarning
from tests.conftest import skip_unless

HERE = Path(__file__).resolve()
DIGITS = HERE.parents[2] / "examples" / "digits"
NORMS = {
    "model": {
        "name": "norms",
        "source": f"{HERE}:norm_block",
        "inputs": [{"name": "x", "shape": ["batch", "sequence", 16]}],
        "dims": {"batch": {"min": 1, "opt": 2, "max": 4}, "sequence": {"min": 2, "opt": 8, "max": 64}},
    }
}


def norm_block() -> Any:
    """One small Linear, three layer norms and a softmax: XNNPACK takes the Linear and the
    softmax and leaves the norms (most of the ops) to portable kernels."""
    import torch
    from torch import nn

    class NormBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.norms = nn.ModuleList(nn.LayerNorm(16) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.proj(x)
            for norm in self.norms:
                y = norm(y)
            return torch.softmax(y, dim=-1)

    torch.manual_seed(0)
    return NormBlock().eval()


def _options(precision: str = "fp32", **options: Any) -> Any:
    return target_options(TargetConfig(name="executorch", precision=precision, options=options))


# Options: typed, validated against the delegate and the precision, before any work.


def test_options_default_to_xnnpack_with_greedy_planning() -> None:
    options = _options()
    assert (options.delegate, options.memory_planning, options.extract_delegate_segments) == ("xnnpack", "greedy", True)


@pytest.mark.parametrize(
    ("precision", "options", "fragment"),
    [
        ("fp32", {"delegat": "coreml"}, "did you mean 'delegate'"),
        ("fp32", {"delegate": "qnn"}, "delegate"),
        ("fp32", {"compute_units": "all"}, "delegate = 'coreml' only"),
        ("int8", {"delegate": "coreml"}, "quantizes for XNNPACK"),
        ("int8-dynamic", {"delegate": "portable"}, "quantizes for XNNPACK"),
        ("int8", {"group_size": 32}, "int4-dynamic only"),
        ("int4-dynamic", {"per_channel": False}, "int8 only"),
        ("fp32", {"segment_alignment": 100}, "power of two"),
        ("fp32", {"extract_delegate_segments": "yes"}, "extract_delegate_segments"),
    ],
)
def test_bad_options_are_one_config_error_naming_the_key(
    precision: str, options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _options(precision, **options)


def test_input_above_a_dims_max_is_a_config_error_before_the_runtime() -> None:
    from kiln.targets.executorch.runner import check_inputs

    sig = Signature((InputSpec(name="x", shape=["batch", 3]),), {"batch": DimSpec(min=1, max=4)})
    check_inputs(sig, {"x": np.zeros((4, 3), np.float32)})
    with pytest.raises(ConfigError, match=r"dim 'batch' is 5, outside 1\.\.4"):
        check_inputs(sig, {"x": np.zeros((5, 3), np.float32)})
    with pytest.raises(ConfigError, match="fixes 3"):
        check_inputs(sig, {"x": np.zeros((2, 4), np.float32)})


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS the Core ML delegate may run")
def test_core_ml_delegate_is_planned_as_built_not_run_here(tmp_path: Path) -> None:
    skip_unless("executorch")
    config = parse_config({**NORMS, "target": [{"name": "executorch", "options": {"delegate": "coreml"}}]}, tmp_path)
    planned = plan(config, tmp_path / "build").targets["executorch-fp32"]
    assert planned.available.build and not planned.available.run
    assert "macOS" in planned.available.reason


# Builds.


@pytest.fixture(scope="module")
def norms(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("norms")
    config = parse_config({**NORMS, "target": [{"name": "executorch"}]}, folder)
    with pytest.warns(PortableFallbackWarning, match="most of the compute stays on portable kernels"):
        (result,) = build(config, folder / "build")
    return Built(result, folder / "build" / "norms" / result.target.key)


@pytest.mark.target("executorch", stage="run")
def test_two_dynamic_dims_are_planned_and_run_at_their_max(norms: Built) -> None:
    assert norms.result.error is None, norms.result.error
    manifest = norms.result.manifest
    assert manifest.gate.passed, manifest.gate.breaches
    assert manifest.execution.get("planned_upper_bounds") == {"batch": 4, "sequence": 64}
    artifact = Artifact.from_manifest(norms.folder)
    sig = artifact.signature
    module = norm_block()
    with implementation("executorch").load(artifact, RunOptions(threads=1)) as runner:
        for sizes in ({"batch": 4, "sequence": 64}, {"batch": 1, "sequence": 2}, {"batch": 4, "sequence": 2}):
            inputs = random_inputs(sig, sizes=sizes, seed=3)
            got = runner.infer(inputs)[sig.outputs[0]]
            assert got.shape == (sizes["batch"], sizes["sequence"], 16)
            np.testing.assert_allclose(got, _eager(module, inputs["x"]), rtol=1e-4, atol=1e-5)
        with pytest.raises(ConfigError, match=r"outside 2\.\.64"):
            runner.infer(random_inputs(sig, sizes={"batch": 4, "sequence": 65}))


@pytest.mark.target("executorch", stage="build")
def test_layer_norms_left_on_portable_kernels_are_counted_and_flagged(norms: Built) -> None:
    execution = norms.result.manifest.execution
    delegation = execution.get("delegation")
    assert delegation["delegate"] == "xnnpack" and delegation["subgraphs"] >= 1
    assert "native_layer_norm" in delegation["portable_ops"]
    assert delegation["portable_ops"]["native_layer_norm"] == 3
    assert 0 < delegation["op_share"] < 0.5 and 0 < delegation["flop_share"] < 1
    assert delegation["mostly_portable"] is True
    assert execution.get("portable_fallback")[0] in delegation["portable_ops"]
    assert any("portable kernels" in note and "native_layer_norm" in note for note in execution.notes)
    assert execution.get("pte_bytes") == (norms.folder / "model.pte").stat().st_size
    assert execution.get("executorch_version", "").startswith("1.5")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    from kiln.config import load_config

    folder = tmp_path_factory.mktemp("digits")
    config = load_config(DIGITS / "kiln.toml")
    targets = [TargetConfig(name="executorch"), TargetConfig(name="executorch", precision="int8")]
    config = config.model_copy(update={"target": targets})
    return {r.target.key: Built(r, folder / "build" / "digits" / r.target.key) for r in build(config, folder / "build")}


@pytest.mark.target("executorch", stage="run", precision="int8")
@pytest.mark.parametrize("key", ["executorch-fp32", "executorch-int8"])
def test_digits_pte_passes_the_gate_with_its_accuracy_recorded(digits: dict[str, Built], key: str) -> None:
    result = digits[key].result
    assert result.error is None, result.error
    gate = result.manifest.gate
    assert gate.passed and not gate.simulated, gate.breaches
    assert gate.evaluation is not None and gate.evaluation.value > 0.95
    assert gate.evaluation.drop <= 0.005
    assert (digits[key].folder / "model.pte").is_file()


@pytest.mark.target("executorch", stage="build", precision="int8")
def test_digits_int8_is_xnnpack_int8_and_smaller_than_fp32(digits: dict[str, Built]) -> None:
    fp32, int8 = (digits[k].result.manifest.execution for k in ("executorch-fp32", "executorch-int8"))
    assert int8.get("quantization")["calibration_samples"] == 300
    assert int8.get("delegation")["portable_ops"] == {}
    assert "quantize_per_tensor" in int8.get("delegation")["delegated_ops"]
    assert int8.get("pte_bytes") * 2 < fp32.get("pte_bytes")


@pytest.mark.target("executorch", stage="build")
def test_core_ml_delegate_is_lowered_here_and_gated_by_simulation(tmp_path: Path) -> None:
    pytest.importorskip(
        "coremltools", reason="the Core ML delegate lowers with coremltools: pip install 'kiln[coreml]'"
    )
    if not availability("coreml").build:
        pytest.skip(f"coreml: {availability('coreml').reason}")
    config = parse_config({**NORMS, "target": [{"name": "executorch", "options": {"delegate": "coreml"}}]}, tmp_path)
    (result,) = build(config, tmp_path / "build")
    assert result.error is None, result.error
    execution = result.manifest.execution
    assert execution.get("delegation")["delegate"] == "coreml" and execution.get("delegation")["op_share"] == 1.0
    assert execution.get("planned_upper_bounds") == {"batch": 4, "sequence": 64}
    if platform.system() == "Darwin":
        return  # the real delegate ran: the conformance of that is the Mac's
    gate = result.manifest.gate
    assert gate.simulated and gate.passed, gate.breaches
    assert "simulation" in execution.get("simulation")
    with pytest.raises(UnavailableError, match="CoreMLBackend"):
        folder = tmp_path / "build" / "norms" / result.target.key
        implementation("executorch").load(Artifact.from_manifest(folder), RunOptions(threads=1))


@dataclass(frozen=True)
class Built:
    result: Any  # kiln.pipeline.build.TargetResult
    folder: Path


def _eager(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.target("executorch", stage="build")
def test_vulkan_delegate_is_lowered_and_built_not_run_with_the_reason(tmp_path: Path) -> None:
    config = parse_config({**NORMS, "target": [{"name": "executorch", "options": {"delegate": "vulkan"}}]}, tmp_path)
    (result,) = build(config, tmp_path / "build")
    assert result.error is None, result.error
    assert result.manifest.execution.get("delegation")["delegate"] == "vulkan"
    assert result.manifest.execution.get("delegation")["subgraphs"] >= 1
    gate = result.manifest.gate
    assert not gate.ran and "Vulkan" in gate.reason
    # kiln bench skips it with the same reason instead of loading it (an error cell).
    from kiln.config import TargetConfig
    from kiln.targets import available_here

    vulkan = available_here(TargetConfig(name="executorch", precision="fp32", options={"delegate": "vulkan"}))
    assert vulkan.build and not vulkan.run and "Vulkan" in vulkan.reason
    assert available_here(TargetConfig(name="executorch", precision="fp32")).run
    assert (tmp_path / "build" / "norms" / "executorch-fp32" / "model.pte").is_file()
