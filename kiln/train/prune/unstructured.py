"""Unstructured pruning: the smallest weights (``magnitude``), or seeded random ones (``random``,
the baseline magnitude must beat), become exact zeros.

Per layer (``scope = "layer"``: each layer loses ``amount`` of its weights) or global (one
threshold over all prunable layers, so redundant layers lose more). Between iterative steps the
masks live as ``torch.nn.utils.prune`` reparametrizations, so fine-tuning cannot revive a pruned
weight; :meth:`MaskPruner.finish` makes them permanent (plain dense tensors with zeros, no hooks),
which is what torch.export captures. Dense kernels do not skip zeros: the gain is size, not speed.
"""

from __future__ import annotations

from typing import Any

from kiln.config import PruneConfig
from kiln.train.prune.common import zero_fraction


def apply_mask(layer: Any, mask: Any) -> None:
    """Install ``mask`` on ``layer.weight`` (replacing an earlier one) until :func:`make_permanent`."""
    from torch.nn.utils import prune

    if prune.is_pruned(layer):
        prune.remove(layer, "weight")
    prune.custom_from_mask(layer, "weight", mask)


def make_permanent(layers: dict[str, Any]) -> None:
    from torch.nn.utils import prune

    for layer in layers.values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def smallest_mask(scores: Any, count: int) -> Any:
    """A 0/1 mask of ``scores``' shape that zeroes exactly its ``count`` smallest entries."""
    import torch

    mask = torch.ones(scores.numel(), dtype=scores.dtype, device=scores.device)
    if count > 0:
        mask[torch.argsort(scores.flatten(), stable=True)[:count]] = 0
    return mask.view_as(scores)


class MaskPruner:
    """Zeroes ``amount * index / steps`` of the weights at step ``index``: those of smallest
    magnitude (``magnitude``), or of smallest seeded random score (``random``: the scores are
    drawn once, so each step's zeros include the last step's, as magnitude's do)."""

    def __init__(self, layers: dict[str, Any], spec: PruneConfig) -> None:
        self.layers, self.spec = layers, spec
        self.random_scores: dict[str, Any] | None = None
        if spec.method == "random":
            import torch

            generator = torch.Generator().manual_seed(spec.seed)
            self.random_scores = {
                n: torch.rand(m.weight.shape, generator=generator, dtype=torch.float32) for n, m in layers.items()
            }

    def scores(self) -> dict[str, Any]:
        if self.random_scores is not None:
            return self.random_scores
        return {n: m.weight.detach().abs() for n, m in self.layers.items()}

    def step(self, index: int) -> None:
        import torch

        fraction = self.spec.amount * index / self.spec.steps
        with torch.no_grad():
            weights = self.scores()
            if self.spec.scope == "global":
                flat = torch.cat([w.flatten() for w in weights.values()])
                mask = smallest_mask(flat, round(fraction * flat.numel()))
                masks, start = {}, 0
                for name, w in weights.items():
                    masks[name] = mask[start : start + w.numel()].view_as(w)
                    start += w.numel()
            else:
                masks = {n: smallest_mask(w, round(fraction * w.numel())) for n, w in weights.items()}
        for name, layer in self.layers.items():
            apply_mask(layer, masks[name])

    def finish(self) -> dict[str, Any]:
        make_permanent(self.layers)
        # The module is the root of every layer here; sparsity per layer shows where global went.
        per_layer = {n: round(_zeros(m), 4) for n, m in self.layers.items()}
        return {"layers_pruned": list(self.layers), "layer_sparsity": per_layer}


def _zeros(layer: Any) -> float:
    return zero_fraction(layer, [""])
