"""Task metrics on the evaluation set: ``top1``, ``cosine``, ``mse`` or a user's ``file.py:fn``.

A user's metric is called as ``fn(predictions, targets) -> float`` with the concatenated arrays
(or ``fn(predictions, targets, inputs)`` if it takes a third argument: the concatenated input
dict, e.g. an attention mask for mean pooling), and is taken as higher-is-better. The drop of a metric is how much worse an artifact is than
eager, whatever the metric's direction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.callables import load_callable
from kiln.data import EvaluationSet
from kiln.errors import DataError
from kiln.parity import row_cosines
from kiln.spec import Arrays

LOWER_IS_BETTER = {"mse"}


def _top1(pred: np.ndarray, target: np.ndarray) -> float:
    labels = target.argmax(-1) if target.ndim == pred.ndim else target.reshape(-1)
    return float((pred.reshape(-1, pred.shape[-1]).argmax(-1) == labels).mean())


def _cosine(pred: np.ndarray, target: np.ndarray) -> float:
    return float(row_cosines(pred.reshape(len(pred), -1), target.reshape(len(target), -1)).mean())


def _mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred.astype(np.float64) - target.reshape(pred.shape)) ** 2))


BUILTIN: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"top1": _top1, "cosine": _cosine, "mse": _mse}


def evaluate(run: Callable[[Arrays], Arrays], evalset: EvaluationSet, root: Path) -> float:
    """Run every evaluation batch through ``run`` and compute the metric."""
    preds, targets, feeds = [], [], []
    for inputs, target in evalset.batches:
        feeds.append(inputs)
        outputs = run(inputs)
        name = evalset.output or next(iter(outputs))
        if name not in outputs:
            raise DataError(f"[evaluation].output {name!r} is not an output of the model ({sorted(outputs)})")
        preds.append(np.asarray(outputs[name], np.float32))
        targets.append(target)
    pred, target = np.concatenate(preds), np.concatenate(targets)
    fn = BUILTIN.get(evalset.metric) or load_callable(evalset.metric, root, "metric")
    try:
        if len(inspect.signature(fn).parameters) >= 3:
            joined = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
            return float(fn(pred, target, joined))
        return float(fn(pred, target))
    except Exception as err:
        raise DataError(f"metric {evalset.metric!r} failed: {type(err).__name__}: {err}") from err


def metric_drop(metric: str, reference: float, value: float) -> float:
    """How much worse ``value`` is than ``reference`` (positive = worse)."""
    return value - reference if metric in LOWER_IS_BETTER else reference - value
