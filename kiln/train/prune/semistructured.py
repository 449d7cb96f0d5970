"""2:4 semi-structured sparsity: in every group of 4 consecutive input channels, 2 are zero.

The pattern NVIDIA's sparse tensor cores (TensorRT ``sparse_weights``) and Core ML's n:m pruning
use. Groups run along the input-channel axis: a Linear weight ``[out, in]`` is grouped along
``in``; a conv weight ``[out, in, kh, kw]`` along ``in`` at each (out, kh, kw) position. A layer is
eligible when its input channels per group are a multiple of 4; others stay dense. The 2 largest
magnitudes of each group are kept. :func:`check_2to4` verifies the pattern on a module or a
state dict (the exported program's, or one read back from an artifact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiln.config import PruneConfig
from kiln.train.prune.unstructured import apply_mask, make_permanent

N, M = 2, 4


def eligible(weight_shape: tuple[int, ...]) -> bool:
    """A 2D (Linear) or 4D (conv) weight whose input-channel axis splits into groups of 4."""
    return len(weight_shape) in (2, 4) and weight_shape[1] % M == 0


def _groups(weight: Any) -> Any:
    """The weight as [..., groups, 4] along its input-channel axis."""
    # [out, kh, kw, in] for a conv, [out, 1, 1, in] for a Linear
    weight = weight.permute(0, 2, 3, 1) if weight.ndim == 4 else weight.unsqueeze(1).unsqueeze(1)
    return weight.reshape(*weight.shape[:-1], weight.shape[-1] // M, M)


def _ungroup(grouped: Any, shape: tuple[int, ...]) -> Any:
    flat = grouped.reshape(*grouped.shape[:-2], -1)  # [out, kh, kw, in]
    return flat.permute(0, 3, 1, 2).contiguous() if len(shape) == 4 else flat.reshape(shape)


def mask_2to4(weight: Any) -> Any:
    """A 0/1 mask keeping the 2 largest magnitudes of every group of 4 input channels."""
    import torch

    grouped = _groups(weight.detach().abs())
    keep = torch.topk(grouped, N, dim=-1).indices
    mask = torch.zeros_like(grouped).scatter_(-1, keep, 1.0)
    return _ungroup(mask, tuple(weight.shape))


def follows_2to4(weight: Any) -> bool:
    """Every group of 4 along the input-channel axis has at least 2 zeros."""
    import numpy as np
    import torch

    tensor = weight.detach() if hasattr(weight, "detach") else torch.from_numpy(np.array(weight))
    if not eligible(tuple(tensor.shape)):
        return False
    nonzero = (_groups(tensor) != 0).sum(-1)
    return bool((nonzero <= N).all())


def check_2to4(weights: Any, names: list[str] | None = None) -> dict[str, Any]:
    """Verify 2:4 sparsity on a module or a state dict (``name.weight`` -> tensor or array).

    With ``names`` (layer names), those layers' weights are checked and must all be eligible and
    follow the pattern; without, every eligible 2D/4D ``weight`` is checked and reported.
    """
    if isinstance(weights, Mapping):
        tensors = {k.removesuffix(".weight"): v for k, v in weights.items() if k.split(".")[-1] == "weight"}
    else:
        from kiln.train.prune.common import is_weight_layer

        tensors = {n: m.weight for n, m in weights.named_modules() if is_weight_layer(m)}
    if names is not None:
        missing = [n for n in names if n not in tensors]
        chosen = {n: tensors[n] for n in names if n in tensors}
    else:
        missing = []
        chosen = {n: t for n, t in tensors.items() if eligible(tuple(t.shape))}
    failed = [n for n, t in chosen.items() if not follows_2to4(t)]
    return {
        "checked": len(chosen),
        "verified": len(chosen) - len(failed),
        "failed": failed,
        "missing": missing,
        "all_verified": bool(chosen) and not failed and not missing,
    }


class SemiStructuredPruner:
    """2:4 masks on the eligible layers; ineligible ones are reported and left dense."""

    def __init__(self, layers: dict[str, Any], spec: PruneConfig) -> None:
        self.spec = spec
        self.layers = {n: m for n, m in layers.items() if eligible(tuple(m.weight.shape))}
        self.ineligible = [n for n in layers if n not in self.layers]

    def step(self, index: int) -> None:
        import torch

        with torch.no_grad():
            masks = {n: mask_2to4(m.weight) for n, m in self.layers.items()}
        for name, layer in self.layers.items():
            apply_mask(layer, masks[name])

    def finish(self) -> dict[str, Any]:
        make_permanent(self.layers)
        return {
            "layers_pruned": list(self.layers),
            "ineligible": self.ineligible,
            "verification": check_2to4({f"{n}.weight": m.weight for n, m in self.layers.items()}, list(self.layers)),
        }
