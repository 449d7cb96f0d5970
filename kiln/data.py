"""Calibration and evaluation data: one spec each, loaded once, checked against the input spec.

A calibration source is a ``.npz`` file, a folder of ``.npy``/``.npz`` files, or a Python callable
(``file.py:fn``) yielding input dicts. An evaluation source is a callable yielding
``(inputs, target)`` batches. Arrays are checked against the input spec before any toolchain
sees them; the content hash of the calibration samples goes into every manifest they fed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.callables import load_callable
from kiln.config import DataSpec, EvaluationConfig
from kiln.errors import DataError
from kiln.spec import NUMPY_DTYPES, Arrays, Signature


def as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def as_inputs(sig: Signature, item: Any, where: str) -> Arrays:
    """Normalise one sample (dict, tuple or single array) into a checked input dict."""
    if isinstance(item, dict):
        arrays = {k: as_array(v) for k, v in item.items()}
    elif isinstance(item, list | tuple):
        arrays = {spec.name: as_array(v) for spec, v in zip(sig.inputs, item, strict=False)}
    else:
        arrays = {sig.inputs[0].name: as_array(item)}
    check_inputs(sig, arrays, where)
    out: Arrays = {}
    for spec in sig.inputs:
        want = np.float32 if spec.dtype == "bfloat16" else NUMPY_DTYPES[spec.dtype]
        out[spec.name] = np.ascontiguousarray(arrays[spec.name].astype(want, copy=False))
    return out


def check_inputs(sig: Signature, arrays: Arrays, where: str) -> None:
    for spec in sig.inputs:
        if spec.name not in arrays:
            raise DataError(
                f"{where}: sample has no input {spec.name!r} (has {sorted(arrays)}); yield every input by name"
            )
        got = arrays[spec.name].shape
        if not sig.fits(spec, got):
            raise DataError(
                f"{where}: input {spec.name!r} has shape {list(got)}, expected {sig.shown(spec)}; "
                "fix the data or the input spec"
            )
        if not castable(arrays[spec.name], spec.dtype):
            raise DataError(
                f"{where}: input {spec.name!r} has dtype {arrays[spec.name].dtype}, expected {spec.dtype}; "
                "convert the data (kiln casts only within a kind: any float width to the spec's float, "
                "integers that fit the spec's integer type, 0/1 to bool)"
            )


def castable(array: np.ndarray, dtype: str) -> bool:
    """Whether data of ``array``'s dtype may stand for ``dtype`` with a documented cast: floats of
    any width for a float input, integers (or booleans) whose values fit an integer input, 0/1
    for a bool input. An integer array for a float input, or floats for token ids, is refused:
    that is a mix-up, not a precision choice."""
    kind = array.dtype.kind
    if dtype.startswith(("float", "bfloat")):
        return kind == "f"
    if dtype == "bool":
        return kind == "b" or (kind in "iu" and bool(np.isin(array, (0, 1)).all()))
    if kind == "b":
        return True
    if kind not in "iu":
        return False
    info = np.iinfo(NUMPY_DTYPES[dtype])
    return array.size == 0 or (int(array.min()) >= info.min and int(array.max()) <= info.max)


@dataclass
class CalibrationSet:
    samples: list[Arrays]
    digest: str
    source: str

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self.samples), "sha256": self.digest}


def digest_arrays(samples: Iterable[Arrays]) -> str:
    h = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            a = np.ascontiguousarray(sample[name])
            h.update(f"{name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _iterate(spec: DataSpec, root: Path) -> Iterable[Any]:
    src = spec.source
    path = Path(src) if Path(src).is_absolute() else root / src
    if src.endswith(".npz") and path.is_file():
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        lengths = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1:
            raise DataError(
                f"calibration file {path}: arrays must share their first (sample) axis, got lengths {lengths}; "
                "save one array per input with the samples stacked along axis 0"
            )
        order = _subset(next(iter(lengths.values())), spec)
        return ({k: v[i : i + 1] for k, v in arrays.items()} for i in order)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise DataError(f"calibration folder {path} has no .npy or .npz files")
        return (_load_file(files[i]) for i in _subset(len(files), spec))
    if ":" in src and not src.endswith(".npz"):
        fn = load_callable(src, root, "calibration source")
        try:
            return iter(fn())
        except Exception as err:
            raise DataError(f"calibration source {src!r} raised {type(err).__name__}: {err}") from err
    raise DataError(f"calibration source {path} not found; give a .npz file, a folder of .npy/.npz, or file.py:fn")


def _subset(count: int, spec: DataSpec) -> list[int]:
    """Which stored samples to use: all of them when they fit, else a ``seed``-ed random subset
    (stored data is often sorted by class; its first N would be a biased sample)."""
    if count <= spec.samples:
        return list(range(count))
    return sorted(np.random.default_rng(spec.seed).choice(count, spec.samples, replace=False).tolist())


def _load_file(path: Path) -> Any:
    if path.suffix == ".npy":
        return np.load(path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_calibration(spec: DataSpec, sig: Signature, root: Path) -> CalibrationSet:
    """Up to ``spec.samples`` samples, checked and hashed. Callables are asked for them in order;
    stored samples beyond ``spec.samples`` are subset with ``spec.seed``."""
    samples: list[Arrays] = []
    items = iter(_iterate(spec, root))
    while len(samples) < spec.samples:
        try:
            item = next(items, None)
        except Exception as err:  # a user's generator failing part-way
            raise DataError(
                f"calibration source {spec.source!r} failed at sample {len(samples)}: {type(err).__name__}: {err}"
            ) from err
        if item is None:
            break
        samples.append(as_inputs(sig, item, f"calibration sample {len(samples)}"))
    if not samples:
        raise DataError(f"calibration source {spec.source!r} yielded no samples")
    return CalibrationSet(samples, digest_arrays(samples), spec.source)


@dataclass
class EvaluationSet:
    batches: list[tuple[Arrays, np.ndarray]]
    metric: str
    output: str | None = None

    @property
    def count(self) -> int:
        return sum(len(t) for _, t in self.batches)


def load_evaluation(spec: EvaluationConfig, sig: Signature, root: Path) -> EvaluationSet:
    fn = load_callable(spec.source, root, "evaluation source")
    batches: list[tuple[Arrays, np.ndarray]] = []
    seen = 0
    try:
        for i, item in enumerate(fn()):
            inputs, target = item
            batches.append((as_inputs(sig, inputs, f"evaluation batch {i}"), as_array(target)))
            seen += len(batches[-1][1])
            if spec.samples and seen >= spec.samples:
                break
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"evaluation source {spec.source!r} failed: {type(err).__name__}: {err}; "
            "it must yield (inputs, target) pairs"
        ) from err
    if not batches:
        raise DataError(f"evaluation source {spec.source!r} yielded nothing")
    return EvaluationSet(batches, spec.metric, spec.output)
