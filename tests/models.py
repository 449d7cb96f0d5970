"""Tiny models built in code, seeded: what the test suite builds artifacts from.

Each factory is referenced from generated kiln.toml files as ``<this file>:<name>``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


class TwoInOut(nn.Module):
    """Two inputs, nested dict/tuple outputs: exercises input order and output naming."""

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(6, 8)
        self.fb = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, object]:
        h = torch.relu(self.fa(a) + self.fb(b))
        return {"logits": self.out(h), "extra": (h, b * 2.0)}


def _init(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return module.eval()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.body[1].running_mean.uniform_(-0.2, 0.2)
        model.body[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def two_in_out() -> nn.Module:
    return _init(TwoInOut())


def cnn_with_example() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A factory that returns (module, example_inputs) and needs no [model].inputs."""
    return tiny_cnn(), (torch.randn(2, 3, 16, 16),)


def broken_factory() -> nn.Module:
    raise RuntimeError("weights file missing")


def cnn_calibration() -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    for _ in range(32):
        yield {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}


def cnn_evaluation() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Labels are the fp32 model's own predictions: eager scores 1.0 top-1."""
    rng = np.random.default_rng(2)
    model = tiny_cnn()
    for _ in range(4):
        x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            labels = model(torch.from_numpy(x)).argmax(1).numpy()
        yield {"x": x}, labels


def two_calibration() -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    for _ in range(32):
        yield {"a": rng.standard_normal((1, 6)).astype(np.float32), "b": rng.standard_normal((1, 4)).astype(np.float32)}


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def data_dependent() -> nn.Module:
    return DataDependent()
