"""Seeded synthetic calibration inputs in the models' real value ranges, for speed only.

The suite's ResNet-50, MobileNet and BERT-base have random weights, so no real data set would
make their accuracy mean anything: these inputs only give the quantizers activation ranges of
the right scale, which is what the int8 kernels' speed depends on. Accuracy is measured on real
data elsewhere (the digits and MiniLM examples).

- ``images``: ImageNet-normalized 224 x 224 RGB images, smooth like photographs (a coarse random
  field upsampled, plus fine texture), pixels in [0, 1] before normalization.
- ``tokens``: BERT inputs of 64 tokens with ids over the whole vocabulary and a full mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
VOCAB, SEQUENCE = 30522, 64


def images(seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    while True:
        coarse = rng.uniform(0, 1, (3, 7, 7)).astype(np.float32)
        smooth = np.kron(coarse, np.ones((32, 32), dtype=np.float32))  # 7 x 32 = 224
        pixels = np.clip(smooth + rng.normal(0, 0.08, (3, 224, 224)).astype(np.float32), 0, 1)
        yield {"x": ((pixels - MEAN) / STD)[None].astype(np.float32)}


def tokens(seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    while True:
        ids = rng.integers(0, VOCAB, (1, SEQUENCE), dtype=np.int64)
        yield {"input_ids": ids, "attention_mask": np.ones((1, SEQUENCE), dtype=np.int64)}
