"""Core ML: conversion, compression and the weight check run everywhere; prediction needs macOS."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="needs coremltools: pip install 'kiln[coreml]'")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from kiln.capture.exporters import ExportBundle  # noqa: E402
from kiln.config import DimSpec, InputSpec, PruneConfig, TargetConfig  # noqa: E402
from kiln.errors import ConfigError, UnavailableError  # noqa: E402
from kiln.spec import Signature, torch_dynamic_shapes  # noqa: E402
from kiln.targets import target_options, tolerance_for  # noqa: E402
from kiln.targets.base import CompileContext, RunOptions  # noqa: E402
from kiln.targets.coreml import TARGET  # noqa: E402
from kiln.targets.coreml.compress import Settings, parse_settings  # noqa: E402
from kiln.targets.coreml.simulation import fold_batchnorm  # noqa: E402

ON_MAC = platform.system() == "Darwin"
DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


class TinyConv(nn.Module):
    """Conv + batch norm, conv, linear: two weights over 10,000 elements (Core ML clusters those
    with kmeans1d, as the PyTorch side does) and one under the 2,048 compression threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 48, 3, padding=1)
        self.fc = nn.Linear(48, 256)
        with torch.no_grad():  # non-trivial running statistics, so folding matters
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn(self.conv(x))))).mean((2, 3)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": self.a(x) + self.b(y), "diff": self.a(x) - self.b(y)}


def bundle_for(module: nn.Module, sig: Signature, tmp: Path) -> ExportBundle:
    torch.manual_seed(0)
    module = module.eval()
    args = tuple(torch.randn(*sig.shape(s, "opt", sig.example_sizes())) for s in sig.inputs)
    from kiln.tensors import flatten_outputs

    with torch.no_grad():
        names, _ = flatten_outputs(module(*args))
    ep = torch.export.export(module, args, dynamic_shapes=torch_dynamic_shapes(sig))
    return ExportBundle(tmp, Signature(sig.inputs, sig.dims, tuple(names)), "python", _program=ep)


def tiny_conv(tmp: Path, sparsity: float = 0.0) -> ExportBundle:
    """The tiny conv net; with ``sparsity``, its smallest weights zeroed as kiln's pruning does."""
    torch.manual_seed(0)
    module = TinyConv()
    with torch.no_grad():
        for w in (module.conv2.weight, module.fc.weight):
            if sparsity:
                w[w.abs() <= w.abs().flatten().quantile(sparsity)] = 0
    sig = Signature((InputSpec(name="x", shape=["batch", 3, 8, 8]),), {"batch": DimSpec(min=1, opt=2, max=16)})
    return bundle_for(module, sig, tmp)


def settings(target: TargetConfig) -> Settings:
    """The settings a build derives: the options validated as the config reader does, then parsed."""
    return parse_settings(target, target_options(target))


def compile_target(bundle: ExportBundle, tmp: Path, precision: str, **kw: Any) -> Any:
    out = tmp / f"out-{precision}-{len(list(tmp.iterdir()))}"
    out.mkdir()
    target = TargetConfig(name="coreml", precision=precision, **kw)
    ctx = CompileContext(bundle, target, target_options(target), out, tolerance_for(target))
    return TARGET.compile(ctx), ctx


def spec_of(artifact: Any) -> Any:
    import coremltools as ct

    return ct.models.MLModel(str(artifact.main), skip_model_load=True).get_spec()


# settings: fast, no conversion


def test_settings_default_to_fp16_ios17_when_uncompressed() -> None:
    s = settings(TargetConfig(name="coreml", precision="fp16"))
    assert (s.mode, s.compute_precision, s.deployment_target, s.compresses) == ("none", "fp16", "iOS17", False)


def test_settings_need_ios18_when_int4_or_joint() -> None:
    assert settings(TargetConfig(name="coreml", precision="int4")).deployment_target == "iOS18"
    joint = TargetConfig(name="coreml", precision="int8", prune=PruneConfig(method="2:4"))
    assert settings(joint).deployment_target == "iOS18"


def test_settings_take_the_typed_options_and_the_precision_defaults() -> None:
    options = {"granularity": "per_block", "block_size": 16, "compute_units": "CPU_ONLY", "weight_threshold": 0}
    s = settings(TargetConfig(name="coreml", precision="int8", options=options))
    assert (s.dtype, s.granularity, s.block_size, s.compute_units, s.weight_threshold) == (
        "int8",
        "per_block",
        16,
        "cpu_only",
        0,
    )
    assert settings(TargetConfig(name="coreml", precision="int4")).granularity == "per_block"
    palette = settings(TargetConfig(name="coreml", precision="palettize"))
    assert (palette.nbits, palette.granularity, palette.group_size) == (6, "per_tensor", 32)
    assert (
        settings(TargetConfig(name="coreml", precision="fp32", options={"compute_precision": "fp16"})).compute_precision
        == "fp32"
    )


@pytest.mark.parametrize(
    ("precision", "options", "prune"),
    [
        ("fp16", {"colour": 1}, None),
        ("palettize4", {"nbits": 6}, None),
        ("palettize", {"nbits": 5}, None),
        ("int8", {"granularity": "per_tensor"}, None),
        ("fp16", {"compute_units": "tpu"}, None),
        ("palettize", {"granularity": "per_block"}, None),
        ("int8", {"block_size": 0}, None),
        ("fp16", {"enumerated_shapes": {"x": []}}, None),
    ],
)
def test_settings_raise_config_error_when_invalid(precision: str, options: dict, prune: Any) -> None:
    with pytest.raises(ConfigError, match=f"coreml:{precision} options: (unknown key ')?{next(iter(options))}"):
        settings(TargetConfig(name="coreml", precision=precision, options=options, prune=prune))


def test_settings_store_sparse_only_when_pruned_to_zeros() -> None:
    assert settings(TargetConfig(name="coreml", precision="fp16", prune=PruneConfig(method="2:4"))).sparse
    channel = TargetConfig(name="coreml", precision="fp16", prune=PruneConfig(method="channel", amount=0.3))
    assert not settings(channel).sparse


def test_fold_batchnorm_keeps_outputs(tmp_path: Path) -> None:
    bundle = tiny_conv(tmp_path)
    gm = bundle.program().module()
    x = torch.randn(4, 3, 8, 8)
    expected = gm(x)
    assert fold_batchnorm(gm) == 1
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)


# conversion


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_compile_writes_mlprogram_with_range_dim_when_batch_dynamic(tmp_path: Path, precision: str) -> None:
    artifact, _ = compile_target(tiny_conv(tmp_path), tmp_path, precision)
    spec = spec_of(artifact)
    assert spec.WhichOneof("Type") == "mlProgram"
    (inp,) = spec.description.input
    assert inp.name == "x"
    batch = inp.type.multiArrayType.shapeRange.sizeRanges[0]
    assert (batch.lowerBound, batch.upperBound) == (1, 16)
    assert inp.type.multiArrayType.dataType == 65568  # FLOAT32: the signature's dtype, not fp16
    assert [o.name for o in spec.description.output] == list(artifact.signature.outputs)
    assert artifact.info.execution_precision == precision
    limit = 1e-3 if precision == "fp16" else 1e-6
    assert artifact.info.weights["worst_max_rel"] < limit
    assert artifact.info.weights["unmatched"] == []


def test_compile_keeps_names_when_two_inputs_and_dict_output(tmp_path: Path) -> None:
    dims = {"batch": DimSpec(min=1, opt=2, max=8)}
    sig = Signature((InputSpec(name="x", shape=["batch", 16]), InputSpec(name="y", shape=["batch", 16])), dims)
    artifact, _ = compile_target(bundle_for(TwoInputs(), sig, tmp_path), tmp_path, "fp32")
    spec = spec_of(artifact)
    assert [i.name for i in spec.description.input] == ["x", "y"]
    assert sorted(o.name for o in spec.description.output) == sorted(artifact.signature.outputs) == ["diff", "sum"]


def test_compile_writes_enumerated_shapes_when_options_list_them(tmp_path: Path) -> None:
    options = {"enumerated_shapes": {"x": [[1, 3, 8, 8], [4, 3, 8, 8]]}}
    artifact, _ = compile_target(tiny_conv(tmp_path), tmp_path, "fp16", options=options)
    shapes = spec_of(artifact).description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert [list(s.shape) for s in shapes] == [[1, 3, 8, 8], [4, 3, 8, 8]]


# compression: each mode writes a valid package whose stored weights are within the mode's error


MODES = [
    # precision, options, pruned sparsity, max relative weight error
    ("int8", {}, 0.0, 5e-3),
    ("int8", {"granularity": "per_block", "block_size": 16, "minimum_deployment_target": "iOS18"}, 0.0, 5e-3),
    ("int4", {"block_size": 16}, 0.0, 0.08),
    ("palettize4", {}, 0.0, 0.5),
    ("palettize", {"nbits": 8}, 0.0, 0.02),
    ("fp16", {}, 0.5, 1e-3),
    ("int8", {}, 0.75, 5e-3),
]


def op_types(spec: Any) -> set[str]:
    return {
        op.type
        for function in spec.mlProgram.functions.values()
        for block in function.block_specializations.values()
        for op in block.operations
    }


@pytest.mark.target("coreml", stage="build")
@pytest.mark.parametrize(("precision", "options", "sparsity", "limit"), MODES)
def test_compression_stores_weights_within_mode_error(
    tmp_path: Path, precision: str, options: dict, sparsity: float, limit: float
) -> None:
    import coremltools as ct

    prune = PruneConfig(method="magnitude", amount=sparsity) if sparsity else None
    bundle = tiny_conv(tmp_path, sparsity)
    artifact, ctx = compile_target(bundle, tmp_path, precision, options=options, prune=prune)
    spec = ct.models.MLModel(str(artifact.main), skip_model_load=True).get_spec()  # a valid, readable package
    weights = artifact.info.weights
    assert set(weights["max_rel"]) == {"conv.weight", "conv2.weight", "fc.weight"}
    assert weights["max_rel"]["conv.weight"] < 1e-3  # under the threshold: fp16 only
    assert weights["worst_max_rel"] < limit
    if precision != "fp16":
        assert weights["worst_max_rel"] > 1e-3  # really compressed: beyond fp16 rounding
    # low-bit levels round some weights to zero too; pruning's zeros are all kept
    assert 0.95 * sparsity <= weights["sparsity"] <= sparsity + 0.1  # pooled with the unpruned conv
    assert ("constexpr_sparse_to_dense" in op_types(spec)) == bool(sparsity)
    # The PyTorch simulation holds the same weights, up to elements on a rounding boundary.
    assert weights["simulation_vs_package"]["differing_fraction"] < 0.05
    runner = TARGET.simulated_runner(artifact, ctx)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    reference = bundle.program().module()(torch.from_numpy(x)).detach().numpy()
    got = runner.infer({"x": x})["output"]
    cosine = (got * reference).sum() / (np.linalg.norm(got) * np.linalg.norm(reference))
    assert got.shape == reference.shape
    assert cosine > 0.9


# platform behaviour


@pytest.mark.skipif(ON_MAC, reason="on macOS w8a8 builds (Core ML predictions calibrate it)")
def test_w8a8_raises_unavailable_when_not_macos(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="needs macOS"):
        compile_target(tiny_conv(tmp_path), tmp_path, "w8a8")


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML predicts")
def test_load_raises_unavailable_when_not_macos(tmp_path: Path) -> None:
    artifact, _ = compile_target(tiny_conv(tmp_path), tmp_path, "fp16")
    with pytest.raises(UnavailableError, match="macOS"):
        TARGET.load(artifact, RunOptions())


@pytest.mark.target("coreml", stage="run")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_prediction_matches_eager_on_macos(tmp_path: Path, precision: str) -> None:
    bundle = tiny_conv(tmp_path)
    artifact, _ = compile_target(bundle, tmp_path, precision)
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    reference = bundle.program().module()(torch.from_numpy(x)).detach().numpy()
    with TARGET.load(artifact, RunOptions()) as runner:
        got = runner.infer({"x": x})["output"]
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4 if precision == "fp32" else 5e-2)


# the digits CNN end to end: package, weights, and simulated accuracy within the gate


@pytest.mark.target("coreml", stage="build")
def test_digits_build_records_simulated_accuracy_and_weights(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn: pip install 'kiln[examples]'")
    from kiln.config import load_config
    from kiln.pipeline.build import build

    config = load_config(DIGITS / "coreml.toml")
    config = config.model_copy(update={"target": [t for t in config.target if t.precision in ("fp32", "int8")]})
    config = config.model_copy(update={"target": [TargetConfig(name="coreml", precision="fp32"), *config.target]})
    results = build(config, tmp_path)
    assert [r.status for r in results] == ["built", "built"]
    for result in results:
        folder = tmp_path / "digits" / result.target.key
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (folder / "model.mlpackage" / "Manifest.json").is_file()
        gate = manifest["gate"]
        assert gate["simulated"] is (not ON_MAC)
        assert gate["passed"], gate["breaches"]
        assert gate["evaluation"]["drop"] <= config.gates.max_metric_drop
        assert gate["evaluation"]["value"] > 0.95
        assert manifest["execution"]["weights"]["worst_max_rel"] < 5e-3
    sizes = [r.manifest.size_bytes for r in results]
    assert sizes[1] < sizes[0] / 3  # int8 weights: about a quarter of fp32
