"""Each pruning method on tiny models built in code: what it removes, what it keeps, and that the
result captures with torch.export and matches the pruned eager model."""

from __future__ import annotations

import pytest
import torch

from kiln.config import PruneConfig
from kiln.data import CalibrationSet
from kiln.errors import ConfigError
from kiln.train.prune import check_2to4, prune_model
from kiln.train.prune.semistructured import mask_2to4
from tests.models import tiny_cnn, two_in_out
from tests.prune.helpers import CNN_SIG, MLP_SIG, TWO_SIG, context
from tests.prune.tasks import blobs_mlp, calibration


def _exports_and_matches(module: torch.nn.Module, x: torch.Tensor) -> None:
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), module(x), rtol=1e-5, atol=1e-5)


def _no_reparametrization(module: torch.nn.Module) -> None:
    names = list(module.state_dict())
    assert not [n for n in names if n.endswith(("_orig", "_mask"))], names
    assert not any(m._forward_pre_hooks for m in module.modules())


def test_channel_removes_channels_keeps_head_and_exports() -> None:
    module, report = prune_model(tiny_cnn(), PruneConfig(method="channel", amount=0.5), context(CNN_SIG))
    assert module.body[0].out_channels == 4 and module.body[1].num_features == 4
    assert module.body[3].out_channels == 8
    assert module.head.out_features == 5 and report.heads == ["head"]
    assert report.layers_pruned == ["body.0", "body.3"] and "head" in report.layers_kept
    assert report.params_after < report.params_before and report.flops_after < report.flops_before
    assert report.channels == {"body.0": [8, 4], "body.3": [16, 8]}
    assert not module.training
    _exports_and_matches(module, torch.randn(3, 3, 16, 16))


def test_channel_keep_leaves_named_layer_whole() -> None:
    module, report = prune_model(
        tiny_cnn(), PruneConfig(method="channel", amount=0.5, keep=["body.0"]), context(CNN_SIG)
    )
    assert module.body[0].out_channels == 8 and module.body[3].out_channels == 8
    assert report.layers_pruned == ["body.3"]


def test_channel_never_changes_an_output_shape_when_hidden_layer_is_also_an_output() -> None:
    dense = two_in_out()
    a, b = torch.randn(3, 6), torch.randn(3, 4)
    with pytest.raises(ConfigError, match="removed nothing"):
        # fa and fb feed the "extra" output h directly: nothing else is prunable.
        prune_model(dense, PruneConfig(method="channel", amount=0.5), context(TWO_SIG))
    assert two_in_out()(a, b)["extra"][0].shape == (3, 8)


def test_channel_global_scope_prunes_to_the_overall_amount() -> None:
    module, report = prune_model(
        blobs_mlp(), PruneConfig(method="channel", amount=0.5, scope="global"), context(MLP_SIG)
    )
    widths = module.body[0].out_features + module.body[2].out_features
    assert widths == 64  # half of 2 x 64 hidden units, shared however the ranking says
    assert report.scope == "global"


def test_channel_taylor_uses_calibration_and_differs_from_magnitude() -> None:
    samples = list(calibration())
    ctx = context(MLP_SIG, calibration=CalibrationSet(samples, "digest", "tasks.py:calibration"))
    taylor, report = prune_model(blobs_mlp(), PruneConfig(method="channel", amount=0.5, importance="taylor"), ctx)
    magnitude, _ = prune_model(blobs_mlp(), PruneConfig(method="channel", amount=0.5), context(MLP_SIG))
    assert report.importance == "taylor" and taylor.body[0].out_features == 32
    assert not torch.equal(taylor.body[0].weight, magnitude.body[0].weight)
    assert all(p.grad is None for p in taylor.parameters())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_zeroes_the_smallest_weights_permanently(scope: str) -> None:
    dense = tiny_cnn()
    module, report = prune_model(tiny_cnn(), PruneConfig(method="magnitude", amount=0.6, scope=scope), context(CNN_SIG))
    _no_reparametrization(module)
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    assert report.params_after == report.params_before and report.flops_after == report.flops_before
    assert report.compressed_bytes_after < report.compressed_bytes_before
    assert torch.equal(module.head.weight, dense.head.weight)  # the head is kept
    if scope == "layer":
        assert all(v == pytest.approx(0.6, abs=0.01) for v in report.layer_sparsity.values())
    kept = module.body[3].weight != 0
    assert dense.body[3].weight[kept].abs().min() >= dense.body[3].weight[~kept].abs().max() or scope == "global"
    _exports_and_matches(module, torch.randn(2, 3, 16, 16))


def test_2to4_prunes_eligible_layers_and_verifies() -> None:
    module, report = prune_model(blobs_mlp(), PruneConfig(method="2:4"), context(MLP_SIG))
    _no_reparametrization(module)
    assert report.layers_pruned == ["body.0", "body.2"] and report.ineligible == []
    assert report.verification["all_verified"] and report.verification["checked"] == 2
    assert report.sparsity == pytest.approx(0.5)
    assert check_2to4(module, ["body.0", "body.2"])["all_verified"]
    assert not check_2to4(module, ["head"])["all_verified"]  # the head stays dense


def test_2to4_leaves_ineligible_conv_dense_and_exports() -> None:
    module, report = prune_model(tiny_cnn(), PruneConfig(method="2:4"), context(CNN_SIG))
    assert report.ineligible == ["body.0"]  # 3 input channels: not a multiple of 4
    assert report.layers_pruned == ["body.3"]
    program = torch.export.export(module, (torch.randn(2, 3, 16, 16),))
    assert check_2to4(program.state_dict, ["body.3"])["all_verified"]
    _exports_and_matches(module, torch.randn(2, 3, 16, 16))


def test_check_2to4_rejects_dense_and_near_miss_weights() -> None:
    dense = torch.randn(8, 16)
    assert not check_2to4({"fc.weight": dense}, ["fc"])["all_verified"]
    sparse = dense * mask_2to4(dense)
    assert check_2to4({"fc.weight": sparse}, ["fc"])["all_verified"]
    near = sparse.clone()
    col = int((near[0, :4] == 0).nonzero()[0])
    near[0, col] = 1.0  # one group with 3 non-zeros
    result = check_2to4({"fc.weight": near.numpy()}, ["fc"])
    assert result["failed"] == ["fc"] and not result["all_verified"]
    assert check_2to4({"fc.weight": sparse}, ["missing"])["missing"] == ["missing"]


def test_mask_2to4_groups_conv_along_input_channels() -> None:
    weight = torch.randn(2, 8, 3, 3)
    mask = mask_2to4(weight)
    groups = mask.permute(0, 2, 3, 1).reshape(2, 3, 3, 2, 4)
    assert torch.equal(groups.sum(-1), torch.full((2, 3, 3, 2), 2.0))
    kept = (weight.abs() * mask).permute(0, 2, 3, 1).reshape(2, 3, 3, 2, 4)
    dropped = (weight.abs() * (1 - mask)).permute(0, 2, 3, 1).reshape(2, 3, 3, 2, 4)
    assert (kept.max(-1).values >= dropped.max(-1).values).all()
    kept_min = torch.where(kept > 0, kept, torch.inf).min(-1).values
    assert (kept_min >= dropped.max(-1).values).all()


def test_random_is_seeded_reaches_the_amount_and_differs_from_magnitude() -> None:
    spec = PruneConfig(method="random", amount=0.5, seed=3)
    first, report = prune_model(tiny_cnn(), spec, context(CNN_SIG))
    again, _ = prune_model(tiny_cnn(), spec, context(CNN_SIG))
    other, _ = prune_model(tiny_cnn(), spec.model_copy(update={"seed": 4}), context(CNN_SIG))
    magnitude, _ = prune_model(tiny_cnn(), PruneConfig(method="magnitude", amount=0.5), context(CNN_SIG))
    _no_reparametrization(first)
    assert report.method == "random" and report.seed == 3 and spec.slug == "random50"
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    zeros = first.body[3].weight == 0
    assert torch.equal(zeros, again.body[3].weight == 0)  # the same seed, the same zeros
    assert not torch.equal(zeros, other.body[3].weight == 0)
    assert not torch.equal(zeros, magnitude.body[3].weight == 0)
    assert torch.equal(first.head.weight, tiny_cnn().head.weight)  # the head is kept
    _exports_and_matches(first, torch.randn(2, 3, 16, 16))


def test_random_iterative_steps_only_add_zeros() -> None:
    from kiln.train.prune.unstructured import MaskPruner

    module = tiny_cnn()
    layers = {"body.3": module.body[3]}
    pruner = MaskPruner(layers, PruneConfig(method="random", amount=0.6, steps=3))
    masks = []
    for index in (1, 2, 3):
        pruner.step(index)
        masks.append((module.body[3].weight == 0).clone())
    assert masks[0].sum() < masks[1].sum() < masks[2].sum()
    assert bool((masks[1] | ~masks[0]).all()) and bool((masks[2] | ~masks[1]).all())


def test_magnitude_keeps_more_accuracy_than_random_at_the_same_sparsity() -> None:
    from tests.prune.tasks import accuracy

    magnitude, _ = prune_model(blobs_mlp(), PruneConfig(method="magnitude", amount=0.8), context(MLP_SIG))
    randomly, _ = prune_model(blobs_mlp(), PruneConfig(method="random", amount=0.8), context(MLP_SIG))
    assert accuracy(magnitude) > accuracy(randomly)


@pytest.mark.parametrize("method", ["magnitude", "random", "channel"])
def test_modules_globs_choose_the_layers_pruned(method: str) -> None:
    dense = tiny_cnn()
    module, report = prune_model(
        tiny_cnn(), PruneConfig(method=method, amount=0.5, modules=["body.3"]), context(CNN_SIG)
    )
    assert report.layers_pruned == ["body.3"] and report.modules == ["body.3"]
    if method == "channel":
        assert module.body[0].out_channels == 8 and module.body[3].out_channels == 8
    else:
        assert torch.equal(module.body[0].weight, dense.body[0].weight)
        assert (module.body[3].weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_modules_match_a_layer_by_its_last_name_and_by_glob() -> None:
    from kiln.train.prune.common import matches

    assert matches("encoder.layer.0.attention.self.query", ["query"])
    assert matches("encoder.layer.0.output.dense", ["dense"])
    assert matches("encoder.layer.11.attention.self.key", ["encoder.layer.1?.*"])
    assert not matches("encoder.layer.0.attention.self.query", ["key", "value"])
    _, report = prune_model(
        blobs_mlp(), PruneConfig(method="magnitude", amount=0.5, modules=["body.*"]), context(MLP_SIG)
    )
    assert report.layers_pruned == ["body.0", "body.2"]  # the head is kept even when a glob matches it


def test_modules_pattern_matching_nothing_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"'query' matches no Linear or Conv layer .*body\.0"):
        prune_model(tiny_cnn(), PruneConfig(method="magnitude", modules=["query"]), context(CNN_SIG))
    with pytest.raises(ConfigError, match="selects only layers that are kept"):
        prune_model(tiny_cnn(), PruneConfig(method="magnitude", modules=["head"]), context(CNN_SIG))
