"""Channel pruning that really removes channels, with torch-pruning's dependency graph.

Toolchain: torch-pruning 1.6.1 (``pip install kiln[prune]``). The graph couples every layer whose
channels must shrink together (a conv, its BatchNorm, the next layer's inputs, residual adds), so
the pruned network is a smaller dense network that captures and exports like the original.

Never pruned: the classifier head, ``prune.keep`` layers, and every group whose channels reach a
model output directly (pruning those would change an output's shape). Importance is the L2 norm
of each channel group (``magnitude``) or first-order Taylor (``taylor``: |w * dL/dw| on the
calibration samples, with the dense model's own predictions as labels, so no labels are needed).
"""

from __future__ import annotations

from typing import Any

from kiln.config import PruneConfig
from kiln.data import CalibrationSet
from kiln.errors import ConfigError
from kiln.spec import Signature
from kiln.train.prune.common import first_output, is_weight_layer

TAYLOR_SAMPLES = 64


def _import_tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        from kiln.errors import MissingDependencyError

        raise MissingDependencyError(
            "channel pruning needs torch-pruning, which is not installed; pip install 'kiln[prune]'"
        ) from err
    return torch_pruning


def output_coupled(module: Any, args: tuple[Any, ...]) -> list[Any]:
    """Weight layers whose output channels reach a model output without passing another weight
    layer (through BatchNorm, activations, adds, pooling ...): pruning them changes its shape.

    Found by walking each output's autograd graph back to the first weight layers; torch-pruning's
    own output detection misses an output that is also consumed inside the model.
    """
    import torch

    from kiln.tensors import flatten_outputs

    made: dict[Any, Any] = {}

    def record(mod: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made[output.grad_fn] = mod

    hooks = [m.register_forward_hook(record) for m in module.modules() if is_weight_layer(m)]
    frozen = [p for p in module.parameters() if not p.requires_grad]
    try:
        for p in frozen:  # every weight layer's output needs a grad_fn to be found
            p.requires_grad_(True)
        with torch.enable_grad():
            _, values = flatten_outputs(module(*args))
    finally:
        for hook in hooks:
            hook.remove()
        for p in frozen:
            p.requires_grad_(False)
    coupled: list[Any] = []
    stack = [v.grad_fn for v in values if isinstance(v, torch.Tensor) and v.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if not any(made[fn] is c for c in coupled):
                coupled.append(made[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return coupled


class ChannelPruner:
    """Removes ``spec.amount`` of the output channels of every prunable group over ``spec.steps``."""

    def __init__(
        self,
        module: Any,
        spec: PruneConfig,
        args: tuple[Any, ...],
        kept: list[str],
        data: tuple[Signature, CalibrationSet | None],
    ) -> None:
        tp = _import_tp()
        sig, calibration = data
        if spec.importance == "taylor" and calibration is None:
            raise ConfigError(
                "prune.importance = 'taylor' needs calibration data for its gradients; "
                "add a [calibration] section or use importance = 'magnitude'"
            )
        self.module, self.sig, self.calibration = module, sig, calibration
        self.taylor = spec.importance == "taylor"
        mods = dict(module.named_modules())
        self.widths_before = _widths(module)
        coupled = output_coupled(module, args)
        self.coupled = [n for n, m in module.named_modules() if any(m is c for c in coupled) and n not in kept]
        ignored = [mods[n] for n in kept] + [mods[n] for n in self.coupled]
        importance = tp.importance.TaylorImportance() if self.taylor else tp.importance.MagnitudeImportance(p=2)
        self.pruner = tp.pruner.BasePruner(
            module,
            args,
            importance=importance,
            global_pruning=spec.scope == "global",
            pruning_ratio=spec.amount,
            iterative_steps=spec.steps,
            ignored_layers=ignored,
        )

    def step(self, index: int) -> None:
        """Prune to ``amount * index / steps`` (torch-pruning keeps the schedule)."""
        if self.taylor:
            self._gradients()
        self.pruner.step()
        self.module.zero_grad(set_to_none=True)
        if not self._pruned(_widths(self.module)):
            raise ConfigError(
                "channel pruning removed nothing: every layer is kept, too narrow, or feeds a model output "
                f"(output-coupled: {self.coupled}); prune a model with hidden layers or shorten prune.keep"
            )

    def _pruned(self, after: dict[str, int]) -> list[str]:
        return [n for n, w in after.items() if w < self.widths_before.get(n, w)]

    def _gradients(self) -> None:
        import torch

        from kiln.tensors import to_tensors

        assert self.calibration is not None
        module = self.module.eval()
        module.zero_grad(set_to_none=True)
        samples = self.calibration.samples[:TAYLOR_SAMPLES]
        with torch.enable_grad():
            for sample in samples:
                out = first_output(module(*to_tensors(self.sig, sample))).float()
                if out.ndim == 2 and out.shape[1] > 1:  # logits: the model's own prediction as the label
                    loss = torch.nn.functional.cross_entropy(out, out.detach().argmax(1))
                else:
                    loss = out.pow(2).mean()
                (loss / len(samples)).backward()

    def finish(self) -> dict[str, Any]:
        after = _widths(self.module)
        pruned = self._pruned(after)
        return {
            "layers_pruned": pruned,
            "layers_kept": [n for n in after if n not in pruned],
            "output_coupled": self.coupled,
            "channels": {n: [self.widths_before[n], after[n]] for n in pruned},
        }


def _widths(module: Any) -> dict[str, int]:
    """Output channels (conv) or features (linear) of every weight layer."""
    return {n: int(m.weight.shape[0]) for n, m in module.named_modules() if is_weight_layer(m)}
