"""Crossing between numpy and PyTorch at a runtime's edge, with the signature's names.

Every runner speaks :data:`kiln.spec.Arrays` (numpy dicts keyed by input and output names); the
PyTorch-based ones (eager, AOTInductor, the parity reference, pruning and PT2E calibration)
convert here, so that strides, bfloat16 and output naming are handled one way. torch is imported
inside the functions that need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.spec import Arrays, Signature


def canonical(a: np.ndarray) -> np.ndarray:
    """A C-ordered array with canonical strides on every axis, size-1 axes included.

    numpy calls an array C-contiguous even when a size-1 axis has an odd stride (a slice of a
    fancy-indexed ``x[:, None]``); AOTInductor kernels index with the strides they were compiled
    for and silently read garbage from such inputs, so they are copied into canonical form.
    """
    expected, step = [], a.itemsize
    for size in reversed(a.shape):
        expected.append(step)
        step *= size
    if a.flags.c_contiguous and tuple(reversed(expected)) == a.strides:
        return a
    return np.array(a, order="C", copy=True)


def to_tensors(sig: Signature, inputs: Arrays, device: str = "cpu") -> list[Any]:
    """Positional tensors in the signature's input order (bfloat16 inputs travel as float32)."""
    import torch

    tensors = []
    for spec in sig.inputs:
        t = torch.from_numpy(canonical(inputs[spec.name]))
        if spec.dtype == "bfloat16":
            t = t.to(torch.bfloat16)
        tensors.append(t.to(device))
    return tensors


def flatten_outputs(out: Any) -> tuple[list[str], list[Any]]:
    """Flatten tuples, dicts, nested containers and ``ModelOutput`` into stable names.

    A single tensor is ``output``; a top-level sequence gives ``output_0``, ``output_1``; dict keys
    are kept; nesting joins with ``.`` (``output_1.hidden``).
    """
    import torch.utils._pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(out)
    names, values = [], []
    for path, value in leaves:
        parts = []
        for i, key in enumerate(path):
            if isinstance(key, pytree.SequenceKey):
                parts.append(f"output_{key.idx}" if i == 0 else str(key.idx))
            elif isinstance(key, pytree.MappingKey):
                parts.append(str(key.key))
            else:
                parts.append(str(getattr(key, "name", key)))
        names.append(".".join(parts) or "output")
        values.append(value)
    return names, values


def named_outputs(names: tuple[str, ...], values: list[Any]) -> Arrays:
    """Pair flat runtime outputs with the recorded output names."""
    if len(names) != len(values):
        raise RuntimeError(f"runtime returned {len(values)} outputs, signature has {len(names)}: {names}")
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def to_arrays(sig: Signature, out: Any) -> Arrays:
    """A model's output tree as numpy arrays under the signature's output names."""
    import torch

    _, values = flatten_outputs(out)
    arrays = [
        v.detach().float().cpu().numpy() if v.dtype == torch.bfloat16 else v.detach().cpu().numpy() for v in values
    ]
    return named_outputs(sig.outputs, arrays)


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (when given) and return what it now uses."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
