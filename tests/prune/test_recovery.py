"""Recovery: fine-tuning (with or without distillation) after pruning, on a small deterministic
task, and iterative prune -> fine-tune -> prune steps."""

from __future__ import annotations

import pytest

from kiln.config import PruneConfig
from kiln.train.prune import prune_model
from tests.prune.helpers import MLP_SIG, context, recovery
from tests.prune.tasks import accuracy, blobs_mlp

HEAVY = PruneConfig(method="channel", amount=0.9)  # 64 -> 6 hidden units: accuracy falls


@pytest.mark.parametrize("distill", [True, False])
def test_recovery_improves_the_metric_after_heavy_channel_pruning(distill: bool) -> None:
    ctx = context(MLP_SIG, recovery=recovery(epochs=4, distill=distill), evaluate=accuracy)
    module, report = prune_model(blobs_mlp(), HEAVY, ctx)
    assert report.metric_dense == pytest.approx(accuracy(blobs_mlp()), abs=1e-6)
    assert report.metric_after_recovery > report.metric_before_recovery + 0.05
    assert report.metric_after_recovery == pytest.approx(accuracy(module), abs=1e-6)
    rec = report.recovery
    assert rec["epochs"] == 4 and rec["distill"] is distill and rec["loss_final"] < rec["loss_first"]
    assert ("temperature" in rec) is distill
    assert not module.training


def test_recovery_without_evaluate_reports_no_metrics() -> None:
    _, report = prune_model(blobs_mlp(), HEAVY, context(MLP_SIG, recovery=recovery(epochs=1)))
    assert report.metric_dense is None and report.metric_after_recovery is None
    assert report.recovery["epochs"] == 1


def test_iterative_steps_fine_tune_between_prunes_to_the_final_amount() -> None:
    spec = PruneConfig(method="channel", amount=0.75, steps=3)
    module, report = prune_model(blobs_mlp(), spec, context(MLP_SIG, recovery=recovery(epochs=1), evaluate=accuracy))
    assert module.body[0].out_features == 16 and module.body[2].out_features == 16
    assert [s["step"] for s in report.iterations] == [1, 2]
    assert report.recovery["total_epochs"] == 3


def test_iterative_magnitude_keeps_pruned_weights_at_zero_through_fine_tuning() -> None:
    spec = PruneConfig(method="magnitude", amount=0.8, steps=2)
    module, report = prune_model(blobs_mlp(), spec, context(MLP_SIG, recovery=recovery(epochs=2)))
    assert report.sparsity == pytest.approx(0.8, abs=0.01)
    assert not [n for n in module.state_dict() if n.endswith(("_orig", "_mask"))]
