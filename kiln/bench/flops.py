"""FLOPs of the model, counted from the captured program at each benchmark batch.

``torch.utils.flop_counter.FlopCounterMode`` counts the matmul-class operators (matmul, conv,
attention, ...; a multiply-add is 2 FLOPs) while the exported program's module runs once on
seeded inputs. Elementwise work is not counted, so the figure is a floor: the usual convention
for roofline fractions.
"""

from __future__ import annotations

from pathlib import Path

from kiln.spec import Signature, batch_dim, random_inputs


def count_flops(program: Path, signature: Signature, batches: list[int]) -> dict[int, int]:
    """FLOPs of one forward pass at each batch size; empty when the program cannot be loaded."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = torch.export.load(str(program)).module()
    dim = batch_dim(signature)
    counts: dict[int, int] = {}
    for batch in batches:
        arrays = random_inputs(signature, "opt", 0, {dim: batch} if dim else {})
        tensors = []
        for spec in signature.inputs:
            t = torch.from_numpy(arrays[spec.name])
            tensors.append(t.to(torch.bfloat16) if spec.dtype == "bfloat16" else t)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            module(*tensors)
        counts[batch] = int(counter.get_total_flops())
    return counts
