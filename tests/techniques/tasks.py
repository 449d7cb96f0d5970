"""Tiny models and data for the technique tests (ensembles, distillation, QAT): four Gaussian
blobs in 16 dimensions with real labels (the pruning tests' generator, harder), MLPs trained on
them in well under a second.

Factories are referenced from generated kiln.toml files as ``<this file>:<name>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
import torch
from torch import nn

from tests.prune import tasks as blobs
from tests.prune.tasks import CLASSES, FEATURES, BlobsMLP


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pruning tests' blobs, closer together: hard enough that members differ and an
    ensemble of them beats its weakest."""
    return blobs._data(seed=1, spread=0.9)


@cache
def _trained(hidden: int, seed: int, steps: int = 40) -> BlobsMLP:
    torch.manual_seed(seed)
    model = BlobsMLP(hidden)
    x, y, _, _ = _data()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs), ys).backward()
            opt.step()
    return model.eval()


def member_a() -> nn.Module:
    return _trained(32, 0)


def member_b() -> nn.Module:
    return _trained(24, 1)


def member_c() -> nn.Module:
    return _trained(16, 2, steps=15)  # a weaker member: the ensemble should beat it


def teacher() -> nn.Module:
    return _trained(64, 3, steps=80)


def student() -> nn.Module:
    torch.manual_seed(4)
    return BlobsMLP(8).eval()  # untrained: distillation trains it


def other_inputs() -> nn.Module:
    """A model taking 12 features: not a member or teacher of the 16-feature models."""
    return nn.Sequential(nn.Linear(12, CLASSES)).eval()


def accuracy(module: nn.Module) -> float:
    _, _, x, y = _data()
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def evaluation() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    _, _, x, y = _data()
    for i in range(0, len(x), 100):
        yield {"x": x[i : i + 100]}, y[i : i + 100]


def calibration() -> Iterator[dict[str, np.ndarray]]:
    x, _, _, _ = _data()
    for i in range(64):
        yield {"x": x[i : i + 1]}


def train_batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    x, y, _, _ = _data()
    order = np.random.default_rng(0).permutation(len(x))
    for i in range(0, len(x), 100):
        idx = order[i : i + 100]
        yield {"x": x[idx]}, y[idx]


TASKS = __file__


def config(name: str, **model: object) -> dict[str, object]:
    """A kiln.toml mapping for these models: inputs, dims, calibration and evaluation."""
    return {
        "model": {
            "name": name,
            "inputs": [{"name": "x", "shape": ["batch", FEATURES]}],
            "dims": {"batch": {"min": 1, "opt": 4, "max": 128}},
            **model,
        },
        "calibration": {"source": f"{TASKS}:calibration", "samples": 64},
        "evaluation": {"source": f"{TASKS}:evaluation", "metric": "top1"},
    }
