"""An ensemble of models as one module: captured once, so every target builds it as one artifact
(one session, one load) and the gate compares that artifact with the eager ensemble.

``[model] ensemble = { members = [...], method = ..., weights = [...], average = ... }``:

- ``mean``: the average of the members' class probabilities (``average = "probabilities"``, a
  softmax over the last axis of each member's first output) or of their raw first outputs
  (``average = "logits"``, which also suits regressors and embeddings);
- ``weighted``: the same average with the config's weights (normalised to sum to 1);
- ``vote``: the majority class. The output is each class's vote count plus half the members'
  mean probability, so its arg-max is the majority class with ties broken by confidence (a
  probability is below 1, so half of it never outweighs a vote), and top-1 reads it as it reads
  any class scores.

Members take the same inputs (one spec); each one's first output is what is combined.
"""

from __future__ import annotations

from typing import Any

from kiln.config import EnsembleConfig


def output_name(spec: EnsembleConfig) -> str:
    """The ensemble's one output: ``votes``, ``probabilities`` or ``logits``."""
    return "votes" if spec.method == "vote" else spec.average


def ensemble_module(members: list[Any], spec: EnsembleConfig, input_names: list[str] | None = None) -> Any:
    """The members wrapped into one ``torch.nn.Module`` combining them per ``spec``; its
    ``forward`` takes the spec's inputs by name, positionally (torch.export matches the dynamic
    dims to those parameters)."""
    import torch

    from kiln.tensors import flatten_outputs

    weights = spec.weights or [1.0] * len(members)
    total = sum(weights)

    class Ensemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float32))
            self.method, self.average, self.output = spec.method, spec.average, output_name(spec)

        def combine(self, *args: Any) -> Any:
            outputs = [flatten_outputs(member(*args))[1][0].float() for member in self.members]
            if self.method == "vote" or self.average == "probabilities":
                probs = [torch.softmax(out, dim=-1) for out in outputs]
            else:
                probs = outputs
            if self.method == "vote":
                votes = sum((p == p.amax(dim=-1, keepdim=True)).float() for p in probs)
                return {self.output: votes + 0.5 * torch.stack(probs).mean(dim=0)}
            stacked = torch.stack(probs)  # [members, ...]
            shape = (len(self.members),) + (1,) * (stacked.ndim - 1)
            return {self.output: (stacked * self.weights.view(shape)).sum(dim=0)}

    names = input_names or ["x"]
    if not all(name.isidentifier() for name in names):
        names = [f"input_{i}" for i in range(len(names))]
    params = ", ".join(names)
    scope: dict[str, Any] = {}
    code = f"def forward(self, {params}):\n    return self.combine({params})\n"
    exec(compile(code, f"<kiln ensemble forward {params}>", "exec"), scope)  # names are identifiers
    Ensemble.forward = scope["forward"]  # type: ignore[attr-defined]
    return Ensemble().eval()
