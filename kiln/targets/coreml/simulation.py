"""The Core ML compression, reproduced in PyTorch with ``coremltools.optimize.torch``.

Where a ``.mlpackage`` cannot run (Linux), kiln runs the eager module of the captured program
with the same compression applied: batch norms are folded into the convolutions first (Core ML
folds them during conversion, and per-tensor palettes or magnitude ranks depend on it), then the
post-training quantizer or palettizer with the package's settings and weight
threshold replaces each weight with its decompressed value, and with ``fp16`` compute every
parameter is rounded to fp16 as the package stores it. Arithmetic stays fp32: fp16 activation
rounding on the device is not simulated.

The compressors act on ``nn.Conv*`` / ``nn.Linear`` modules, and the captured program's module
calls ATen ops on bare parameters, so each weight is compressed inside a throwaway module of its
shape and written back.
"""

from __future__ import annotations

from typing import Any

from kiln.targets.coreml.compress import Settings

CONVS = ("conv1d", "conv2d", "conv3d", "convolution")


def _attr(gm: Any, node: Any) -> Any:
    return gm.get_parameter(node.target) if node.target in dict(gm.named_parameters()) else gm.get_buffer(node.target)


def _set(gm: Any, target: str, value: Any) -> None:
    import torch

    owner, _, name = target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    setattr(module, name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))


def fold_batchnorm(gm: Any) -> int:
    """Fold inference batch norms into the convolution that feeds them (in place); returns how many."""
    import torch

    folded = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target is not torch.ops.aten.batch_norm.default:
            continue
        conv, gamma, beta, mean, var, training, _, eps = bn.args[:8]
        if (
            training
            or conv.op != "call_function"
            or getattr(conv.target, "__name__", "").split(".")[0] not in CONVS
            or len(conv.users) != 1
            or (conv.target is torch.ops.aten.convolution.default and conv.args[6])  # transposed
            or any(n is None or n.op != "get_attr" for n in (gamma, beta, mean, var))
            or conv.args[1].op != "get_attr"
            or len(conv.args) < 3
            or conv.args[2] is None
            or conv.args[2].op != "get_attr"
        ):
            continue
        weight, bias = _attr(gm, conv.args[1]), _attr(gm, conv.args[2])
        scale = _attr(gm, gamma) / torch.sqrt(_attr(gm, var) + eps)
        _set(gm, conv.args[1].target, weight * scale.reshape(-1, *([1] * (weight.dim() - 1))))
        _set(gm, conv.args[2].target, (bias - _attr(gm, mean)) * scale + _attr(gm, beta))
        bn.replace_all_uses_with(conv)
        gm.graph.erase_node(bn)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


def weighted_module(program: Any) -> Any:
    """The program's eager module with batch norms folded, as Core ML converts it."""
    gm = program.module()
    fold_batchnorm(gm)
    return gm


def matrices(gm: Any) -> dict[str, Any]:
    """Parameters the compressors act on: float weights of rank 2 to 5."""
    return {name: p.detach() for name, p in gm.named_parameters() if 2 <= p.dim() <= 5 and p.is_floating_point()}


def _holder(weight: Any) -> Any:
    from torch import nn

    out, inp, *kernel = weight.shape
    if not kernel:
        module: nn.Module = nn.Linear(inp, out, bias=False)
    else:
        module = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(kernel)](inp, out, tuple(kernel), bias=False)
    module.weight.data.copy_(weight)
    return module


def _compress_holders(holders: Any, settings: Settings) -> Any:
    import coremltools.optimize.torch.palettization as pal
    import coremltools.optimize.torch.quantization as qnt

    if settings.mode in ("linear", "w8a8"):
        granularity = settings.granularity if settings.mode == "linear" else "per_channel"
        config = qnt.ModulePostTrainingQuantizerConfig(
            weight_dtype=settings.dtype,
            granularity=granularity,
            block_size=settings.block_size if granularity == "per_block" else None,
        )
        holders = qnt.PostTrainingQuantizer(holders, qnt.PostTrainingQuantizerConfig(global_config=config)).compress()
    elif settings.mode == "palettize":
        config = pal.ModulePostTrainingPalettizerConfig(
            n_bits=settings.nbits,
            granularity=settings.granularity,
            group_size=settings.group_size if settings.granularity == "per_grouped_channel" else None,
            # exact 1-D k-means on the fp16 values, as the package's kmeans1d clusters them (the fast
            # mode rounds to 4 decimals first and moves boundaries)
            enable_fast_kmeans_mode=False,
        )
        holders = pal.PostTrainingPalettizer(holders, pal.PostTrainingPalettizerConfig(global_config=config)).compress()
    return holders


def _round_fp16(gm: Any) -> None:
    import torch

    for name, p in list(gm.named_parameters()):
        if p.is_floating_point():
            _set(gm, name, p.detach().to(torch.float16).to(p.dtype))


def simulate(gm: Any, settings: Settings) -> dict[str, Any]:
    """Apply the package's compression to ``gm`` in place; returns the weights it now holds."""
    from torch import nn

    if settings.compute_precision == "fp16":
        _round_fp16(gm)  # the package converts to fp16 first and compresses the fp16 weights
    targets = {name: w for name, w in matrices(gm).items() if w.numel() > settings.weight_threshold}
    if settings.compresses and targets:
        holders = nn.ModuleDict({name.replace(".", "__"): _holder(w) for name, w in targets.items()})
        holders = _compress_holders(holders, settings)
        for name, before in targets.items():
            after = holders[name.replace(".", "__")].weight.detach()
            # joint compression keeps a pruned model's zeros through quantization or palettes
            _set(gm, name, after.masked_fill(before == 0, 0) if settings.sparse else after)
    if settings.compute_precision == "fp16":
        _round_fp16(gm)
    return {name: w.clone() for name, w in matrices(gm).items()}


def _to_fp16(x: Any) -> Any:
    import torch

    return x.to(torch.float16).to(torch.float32)


def round_activations(gm: Any) -> int:
    """Round every float32 intermediate of ``gm`` to fp16 (in place), as fp16 compute stores
    them; arithmetic inside each op stays fp32. Returns how many values are rounded."""
    import torch

    rounded = 0
    for node in list(gm.graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
            continue
        with gm.graph.inserting_after(node):
            rounding = gm.graph.call_function(_to_fp16, (node,))
        node.replace_all_uses_with(rounding, delete_user_cb=lambda user, r=rounding: user is not r)
        rounded += 1
    gm.recompile()
    return rounded
