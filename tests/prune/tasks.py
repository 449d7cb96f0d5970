"""A small deterministic task for pruning tests: 4 Gaussian blobs in 16 dimensions, a trained MLP.

Factories are referenced from generated kiln.toml files as ``<this file>:<name>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
import torch
from torch import nn

CLASSES, FEATURES = 4, 16


@cache
def _data(seed: int = 0, spread: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y): blobs whose centres are ``spread`` apart (closer: harder)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32) * spread
    y = rng.integers(0, CLASSES, 1200)
    x = (centres[y] + rng.standard_normal((len(y), FEATURES))).astype(np.float32)
    return x[:800], y[:800], x[800:], y[800:]


class BlobsMLP(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@cache
def _trained() -> BlobsMLP:
    torch.manual_seed(0)
    model = BlobsMLP()
    x, y, _, _ = _data()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs), ys).backward()
            opt.step()
    return model.eval()


def blobs_mlp() -> nn.Module:
    import copy

    return copy.deepcopy(_trained())


def accuracy(module: nn.Module) -> float:
    _, _, x, y = _data()
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train_batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    x, y, _, _ = _data()
    for i in range(0, len(x), 100):
        yield {"x": x[i : i + 100]}, y[i : i + 100]


def no_batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    yield from ()


def calibration() -> Iterator[dict[str, np.ndarray]]:
    x, _, _, _ = _data()
    for i in range(32):
        yield {"x": x[i : i + 1]}
