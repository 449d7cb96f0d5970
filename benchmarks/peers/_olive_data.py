"""Olive user script: kiln's calibration samples (an .npz, one array per input, samples stacked on
axis 0) as an Olive dataset, so Olive's quantizer calibrates on exactly what kiln's did.

Olive imports this file itself (``user_script`` in the workflow config); items are (inputs, label)
pairs without the batch axis, which Olive's default dataloader (batch_size 1) adds back.
"""

from __future__ import annotations

import numpy as np
from olive.data.registry import Registry


class NpzSamples:
    def __init__(self, path: str) -> None:
        with np.load(path) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.count = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], int]:
        return {k: v[i] for k, v in self.arrays.items()}, 0


@Registry.register_dataset()
def kiln_npz_dataset(path: str, **kwargs: object) -> NpzSamples:
    return NpzSamples(path)
