"""llama.cpp's block grids, found in a weight's values: a model dequantized from a GGUF file still
lies exactly on the file's grid, so its blocks can be written back instead of re-quantized.

transformers dequantizes a GGUF file to fp32, and that model is the reference every gate compares
with. In llama.cpp's ``Q4_1`` every run of 32 weights along the input is ``q * d + m`` (``q``
0..15, ``d`` and ``m`` fp16), in ``Q4_0`` ``(q - 8) * d``, in ``Q8_0`` ``q * d`` (``q`` -127..127).
Each block's grid is recovered from its own values, as llama.cpp chose it: ``Q4_1``: ``m`` is the
block's minimum and ``d`` its range over 15 (the minimum quantizes to 0, the maximum to 15);
``Q4_0``: ``d`` is the value of largest magnitude over -8; ``Q8_0``: ``d`` is the largest
magnitude over 127. A weight is on a grid when every block's reconstruction is within a
thousandth of a quantization step of its value (weights that were never quantized miss by a
quarter of a step on average), so no file name or tensor map is needed: the values are the
evidence, and ordinary weights are never mistaken for quantized ones. The runtimes' own layouts
are written by :mod:`kiln.targets.openvino.blocks` and :mod:`kiln.targets.onnxruntime.blocks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

BLOCK = 32  # llama.cpp's Q4_0, Q4_1, Q8_0
TOLERANCE = 1e-3  # of a quantization step: on a grid when every weight is this close to its point
KINDS = ("q4_0", "q4_1", "q8_0")


@dataclass(frozen=True)
class Grid:
    """One weight's blocks: ``q`` [out, in / 32, 32] unsigned (``u4`` for the 4-bit kinds, ``u8``
    for ``q8_0``), ``scale`` [out, in / 32, 1] fp16, and the zero point in units of ``q``: for
    ``q4_1`` from each block's fp16 minimum ``low`` (``-low / scale``, a float), else one number:
    8 for ``q4_0``, 128 for ``q8_0`` (its signed bytes offset: the CPU plugin quantizes the
    activations of an ``i8``-weighted layer dynamically, about 0.5 % off on a test layer, and
    leaves ``u8`` exact)."""

    kind: str
    q: np.ndarray
    scale: np.ndarray
    offset: float = 0.0
    low: np.ndarray | None = None
    miss: float = 0.0  # the largest distance of a weight from its point, in quantization steps

    @property
    def zero(self) -> np.ndarray | float:
        if self.low is None:
            return self.offset
        return -self.low.astype(np.float32) / self.scale.astype(np.float32)

    @property
    def bits(self) -> int:
        return 8 if self.kind == "q8_0" else 4

    def dequantized(self) -> np.ndarray:
        values = (self.q.astype(np.float32) - self.zero) * self.scale.astype(np.float32)
        return values.reshape(self.q.shape[0], -1)

    @property
    def nbytes(self) -> int:
        return self.q.size * self.bits // 8 + self.scale.nbytes + (0 if self.low is None else self.low.nbytes)


def _steps(span: np.ndarray, levels: int) -> np.ndarray:
    """Each block's quantization step as llama.cpp stores it: fp16, never zero."""
    d = (span / levels).astype(np.float16)
    return np.where(d == 0, np.float16(1), d)


def _q4_1(blocks: np.ndarray) -> Grid:
    low = blocks.min(-1, keepdims=True).astype(np.float16)
    d = _steps(blocks.max(-1, keepdims=True) - low.astype(np.float32), 15)
    df, lf = d.astype(np.float32), low.astype(np.float32)
    q = np.clip(np.rint((blocks - lf) / df), 0, 15).astype(np.uint8)
    return Grid("q4_1", q, d, low=low)


def _q4_0(blocks: np.ndarray) -> Grid:
    at = np.abs(blocks).argmax(-1)[..., None]
    d = _steps(np.take_along_axis(blocks, at, -1), -8)
    q = np.clip(np.rint(blocks / d.astype(np.float32) + 8), 0, 15).astype(np.uint8)
    return Grid("q4_0", q, d, offset=8.0)


def _q8_0(blocks: np.ndarray) -> Grid:
    d = _steps(np.abs(blocks).max(-1, keepdims=True), 127)
    q = np.clip(np.rint(blocks / d.astype(np.float32)), -127, 127) + 128
    return Grid("q8_0", q.astype(np.uint8), d, offset=128.0)


FITS = {"q4_0": _q4_0, "q4_1": _q4_1, "q8_0": _q8_0}


def fit(weight: np.ndarray, kinds: tuple[str, ...] = KINDS) -> Grid | None:
    """The grid a weight [out, in] lies on (blocks of 32 along ``in``), or ``None``."""
    if weight.ndim != 2 or weight.shape[1] % BLOCK or not np.isfinite(weight).all():
        return None
    # C order: OpenVINO reads a constant's bytes as laid out (a transposed view would be garbled)
    blocks = np.ascontiguousarray(weight, dtype=np.float32).reshape(weight.shape[0], -1, BLOCK)
    if not (blocks.max(-1) > blocks.min(-1)).any():
        return None  # constant blocks fit every grid: no evidence of one
    for kind in kinds:
        grid = FITS[kind](blocks)
        miss = np.abs(grid.dequantized().reshape(blocks.shape) - blocks) / np.abs(grid.scale.astype(np.float32))
        if float(miss.max()) <= TOLERANCE:
            return dataclasses.replace(grid, miss=float(miss.max()))
    return None


@dataclass
class Fitted:
    """What a runtime's plan found in a model: a grid per weight (by the name the runtime gives
    it) and the weights on none (with their element counts)."""

    grids: dict[str, Grid] = field(default_factory=dict)
    off: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.grids) and not self.off

    @property
    def miss(self) -> float:
        """The largest distance of any weight from its point, in quantization steps."""
        return max((grid.miss for grid in self.grids.values()), default=0.0)

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for grid in self.grids.values():
            counts[grid.kind] = counts.get(grid.kind, 0) + 1
        return counts
