"""Config and data errors: one line each, before work is wasted."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import PruneConfig, parse_config
from kiln.errors import ConfigError, DataError
from kiln.train.prune import prune_model
from tests.conftest import CNN
from tests.models import tiny_cnn
from tests.prune.helpers import CNN_SIG, MLP_SIG, context, recovery
from tests.prune.tasks import blobs_mlp


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"method": "channel", "amount": 1.5}, "target.0.prune.amount"),
        ({"method": "channel", "amount": 0}, "target.0.prune.amount"),
        ({"method": "lottery", "amount": 0.3}, "target.0.prune.method"),
        ({"method": "channel", "steps": 0}, "target.0.prune.steps"),
    ],
)
def test_bad_prune_config_is_one_config_error_line(prune: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_config({**CNN, "target": [{"name": "eager", "prune": prune}]}, Path("."))
    assert "\n" not in str(err.value)


def test_steps_without_recovery_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no \[recovery\] section"):
        prune_model(tiny_cnn(), PruneConfig(method="channel", amount=0.5, steps=2), context(CNN_SIG))


def test_recovery_source_that_yields_nothing_is_a_data_error() -> None:
    ctx = context(MLP_SIG, recovery=recovery("tasks.py:no_batches"))
    with pytest.raises(DataError, match="yielded no batches"):
        prune_model(blobs_mlp(), PruneConfig(method="channel", amount=0.5), ctx)


def test_recovery_batches_of_the_wrong_shape_are_a_data_error() -> None:
    ctx = context(CNN_SIG, recovery=recovery())  # 16-feature batches for an image model
    with pytest.raises(DataError, match="recovery batch 0"):
        prune_model(tiny_cnn(), PruneConfig(method="channel", amount=0.5), ctx)


def test_taylor_without_calibration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"needs calibration data"):
        prune_model(tiny_cnn(), PruneConfig(method="channel", importance="taylor"), context(CNN_SIG))


def test_unknown_keep_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'classifier'"):
        prune_model(tiny_cnn(), PruneConfig(method="magnitude", keep=["classifier"]), context(CNN_SIG))


@pytest.mark.parametrize(
    "spec",
    [PruneConfig(method="2:4", steps=2), PruneConfig(method="magnitude", importance="taylor")],
)
def test_impossible_method_options_are_config_errors(spec: PruneConfig) -> None:
    ctx = context(CNN_SIG, recovery=recovery())
    with pytest.raises(ConfigError):
        prune_model(tiny_cnn(), spec, ctx)
