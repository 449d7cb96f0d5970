"""Parameters, FLOPs and weight size of a module, before and after pruning.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the example inputs (matmul-class
operators, a multiply-add is 2 FLOPs), the same convention as the benchmark's roofline figures.
Zeros cost as much as any other weight in a dense kernel, so unstructured and 2:4 pruning leave
FLOPs unchanged; their value shows in ``compressed_bytes`` (zlib of the fp32 weights), which is
what a zip of the artifact or a sparse storage format gains.
"""

from __future__ import annotations

import zlib
from typing import Any


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: Any, args: tuple[Any, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*args)
    return int(counter.get_total_flops())


def weight_bytes(module: Any) -> tuple[int, int]:
    """(raw, zlib-compressed) bytes of every floating-point parameter and buffer."""
    raw = 0
    packer = zlib.compressobj(level=6)
    compressed = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if not tensor.is_floating_point():
            continue
        data = tensor.detach().float().cpu().contiguous().numpy().tobytes()
        raw += len(data)
        compressed += len(packer.compress(data))
    compressed += len(packer.flush())
    return raw, compressed


def footprint(module: Any, args: tuple[Any, ...]) -> dict[str, int]:
    """Parameters, FLOPs at the example inputs and weight bytes, for the report."""
    raw, compressed = weight_bytes(module)
    return {
        "params": count_params(module),
        "flops": count_flops(module, args),
        "weight_bytes": raw,
        "compressed_bytes": compressed,
    }
