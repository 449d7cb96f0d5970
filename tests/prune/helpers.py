"""Signatures and contexts shared by the pruning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.config import DimSpec, InputSpec, RecoveryConfig
from kiln.spec import Signature
from kiln.train.prune import PruneContext

HERE = Path(__file__).parent

CNN_SIG = Signature((InputSpec(name="x", shape=["batch", 3, 16, 16]),), {"batch": DimSpec(min=1, opt=2, max=8)})
MLP_SIG = Signature((InputSpec(name="x", shape=["batch", 16]),), {"batch": DimSpec(min=1, opt=4, max=128)})
TWO_SIG = Signature(
    (InputSpec(name="a", shape=["batch", 6]), InputSpec(name="b", shape=["batch", 4])),
    {"batch": DimSpec(min=1, opt=3, max=16)},
)


def recovery(source: str = "tasks.py:train_batches", **kw: Any) -> RecoveryConfig:
    return RecoveryConfig(source=source, **{"epochs": 3, "lr": 3e-3, **kw})


def context(sig: Signature, **kw: Any) -> PruneContext:
    return PruneContext(signature=sig, root=HERE, **kw)
