"""FLOPs and weight bytes of the model, from the captured program.

``torch.utils.flop_counter.FlopCounterMode`` counts the matmul-class operators (matmul, conv,
attention, ...; a multiply-add is 2 FLOPs) while the exported program's module runs once on
seeded inputs. Elementwise work is not counted, so the figure is a floor: the usual convention
for roofline fractions. A causal LM is counted at one decode step (``sizes`` gives its sequence
and past lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.spec import Signature, batch_dim, random_inputs


@dataclass(frozen=True)
class ProgramWeights:
    """The captured program's weights: every parameter, buffer and constant, and the part of
    them only ever indexed (an input embedding not tied to the output head), of which a decode
    step reads one row."""

    total_bytes: int
    gathered_bytes: int


def count_flops(
    program: Any, signature: Signature, batches: list[int], sizes: dict[str, int] | None = None
) -> dict[int, int]:
    """FLOPs of one forward pass at each batch size of a loaded ``ExportedProgram``; ``sizes``
    fixes other dims (the rest are at their ``opt`` size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = program.module()
    dim = batch_dim(signature)
    counts: dict[int, int] = {}
    for batch in batches:
        arrays = random_inputs(signature, "opt", 0, {**(sizes or {}), **({dim: batch} if dim else {})})
        tensors = []
        for spec in signature.inputs:
            t = torch.from_numpy(arrays[spec.name])
            tensors.append(t.to(torch.bfloat16) if spec.dtype == "bfloat16" else t)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            module(*tensors)
        counts[batch] = int(counter.get_total_flops())
    return counts


def program_weights(program: Any) -> ProgramWeights:
    """Bytes of the program's weights, and of those only read by ``aten.embedding`` (a lookup
    reads one row per token, not the table)."""
    import torch

    sig = program.graph_signature
    named = {**program.state_dict, **program.constants}
    total = sum(t.numel() * t.element_size() for t in named.values() if isinstance(t, torch.Tensor))
    by_node = {spec.arg.name: spec.target for spec in sig.input_specs if spec.target in named}
    gathered = 0
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in by_node or not node.users:
            continue
        if all(user.target == torch.ops.aten.embedding.default for user in node.users):
            table = named[by_node[node.name]]
            gathered += table.numel() * table.element_size()
    return ProgramWeights(total_bytes=total, gathered_bytes=gathered)
