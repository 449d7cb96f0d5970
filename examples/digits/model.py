"""A small CNN trained in seconds, seeded, on scikit-learn's handwritten digits.

Repeatable on one machine and thread count; another CPU's kernels round differently, so the
accuracy there differs by about a point (gates compare with the eager model of the same run).

Real data and a real accuracy: 1,797 8x8 images, a fixed 75/25 split, about 97 % test accuracy.
``build`` returns the trained model; ``calibration`` yields training images for quantizers;
``evaluation`` yields (images, labels) batches of the held-out test set.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache

import numpy as np
import torch
from torch import nn

SEED = 0
EPOCHS = 12


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 - 0.5)[:, None]  # [n, 1, 8, 8], centred
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.75 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = EPOCHS, seed: int = SEED) -> nn.Module:
    torch.manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.enable_grad():
        _epochs(model, opt, xs, ys, gen, epochs)
    return model.eval()


def _epochs(
    model: nn.Module, opt: torch.optim.Optimizer, xs: torch.Tensor, ys: torch.Tensor, gen: torch.Generator, epochs: int
) -> None:
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()


@cache
def _trained() -> DigitsCNN:
    torch.manual_seed(SEED)
    x, y, _, _ = _split()
    return train(DigitsCNN(), x, y)


def build() -> nn.Module:
    return _trained()


@cache
def _member(width: int, seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    x, y, _, _ = _split()
    return train(DigitsCNN(width), x, y, seed=seed)


def member_seed1() -> nn.Module:
    """An ensemble member: the same CNN trained from another seed (ensemble.toml)."""
    return _member(32, 1)


def member_narrow() -> nn.Module:
    """An ensemble member: a narrower CNN (16 channels at the first layer), its own seed."""
    return _member(16, 2)


def student() -> nn.Module:
    """The student distill.toml distils build()'s CNN into: a quarter of its width (about 1/14 of
    its parameters), untrained; [recovery] trains it from the teacher and the labels."""
    torch.manual_seed(SEED)
    return DigitsCNN(8).eval()


def calibration() -> Iterator[dict[str, np.ndarray]]:
    x, _, _, _ = _split()
    for i in range(len(x)):
        yield {"x": x[i : i + 1]}


def evaluation() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    _, _, x, y = _split()
    for i in range(0, len(x), 50):
        yield {"x": x[i : i + 50]}, y[i : i + 50]


_train_epoch = itertools.count()


def train_batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Shuffled (images, labels) batches of the training split, for pruning recovery
    (``[recovery].source``); each call is one epoch in a new, seeded order."""
    x, y, _, _ = _split()
    order = np.random.default_rng(SEED + next(_train_epoch)).permutation(len(x))
    for i in range(0, len(x), 64):
        idx = order[i : i + 64]
        yield {"x": x[idx]}, y[idx]


if __name__ == "__main__":
    _, _, xt, yt = _split()
    with torch.no_grad():
        acc = (build()(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean()
    print(f"digits test accuracy: {acc:.4f}")
