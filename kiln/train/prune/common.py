"""What every pruning method shares: example inputs, the layers it may touch, and the heads it
must not, found by running the model once."""

from __future__ import annotations

from typing import Any

from kiln.errors import ConfigError
from kiln.spec import Signature, random_inputs
from kiln.train.finetune import first_output as first_output  # the pruning methods read it from here

WEIGHT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def example_inputs(sig: Signature, seed: int = 0) -> tuple[Any, ...]:
    """Seeded positional tensors at the signature's opt point."""
    from kiln.tensors import to_tensors

    return tuple(to_tensors(sig, random_inputs(sig, "opt", seed)))


def is_weight_layer(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear | torch.nn.modules.conv._ConvNd)


def execution_order(module: Any, args: tuple[Any, ...]) -> list[str]:
    """Names of the Linear/Conv layers in the order one forward pass runs them."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    order: list[str] = []

    def record(mod: Any, _inputs: Any, _output: Any) -> None:
        order.append(names[mod])

    hooks = [m.register_forward_hook(record) for m in module.modules() if is_weight_layer(m)]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def classifier_heads(order: list[str], module: Any) -> list[str]:
    """The last Linear that runs (the classifier head); the last conv when there is no Linear."""
    import torch

    mods = dict(module.named_modules())
    linears = [n for n in order if isinstance(mods[n], torch.nn.Linear)]
    last = linears[-1] if linears else (order[-1] if order else None)
    return [last] if last is not None else []


def matches(name: str, patterns: list[str]) -> bool:
    """Whether a module name matches any glob pattern, on its full dotted name or its last part."""
    from fnmatch import fnmatchcase

    leaf = name.rpartition(".")[2]
    return any(fnmatchcase(name, pattern) or fnmatchcase(leaf, pattern) for pattern in patterns)


def chosen(module: Any, patterns: list[str]) -> list[str]:
    """The weight layers ``prune.modules`` selects; every pattern must select at least one."""
    layers = [n for n, m in module.named_modules() if is_weight_layer(m)]
    for pattern in patterns:
        if not any(matches(n, [pattern]) for n in layers):
            shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
            raise ConfigError(
                f"prune.modules pattern {pattern!r} matches no Linear or Conv layer of the model (its layers: {shown}); "
                "use glob patterns over names from model.named_modules()"
            )
    return [n for n in layers if matches(n, patterns)]


def protected(
    module: Any, args: tuple[Any, ...], keep: list[str], modules: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(heads, kept layer names): the classifier head, every weight layer under a ``keep`` name,
    and, when ``modules`` patterns are given, every weight layer they do not select."""
    mods = dict(module.named_modules())
    for name in keep:
        if name not in mods:
            shown = ", ".join(n for n in list(mods)[1:8])
            raise ConfigError(
                f"prune.keep names {name!r}, which is not a module of the model (e.g. {shown}); "
                "use names from model.named_modules()"
            )
    heads = classifier_heads(execution_order(module, args), module)
    kept = list(heads)
    for name in keep:
        for sub, mod in mods[name].named_modules():
            full = f"{name}.{sub}" if sub else name
            if is_weight_layer(mod) and full not in kept:
                kept.append(full)
    if modules:
        selected = chosen(module, modules)
        kept += [n for n, m in module.named_modules() if is_weight_layer(m) and n not in selected and n not in kept]
        if all(n in kept for n in selected):
            raise ConfigError(
                f"prune.modules {modules} selects only layers that are kept (the classifier head or prune.keep: "
                f"{[n for n in selected if n in kept]}); widen the patterns or shorten prune.keep"
            )
    return heads, kept


def weight_layers(module: Any, excluded: list[str]) -> dict[str, Any]:
    """Linear/Conv layers by name, minus the excluded ones, in definition order."""
    return {n: m for n, m in module.named_modules() if is_weight_layer(m) and n not in excluded}


def zero_fraction(module: Any, names: list[str]) -> float:
    """Fraction of exactly-zero weights over the named layers."""
    mods = dict(module.named_modules())
    total = zeros = 0
    for name in names:
        weight = mods[name].weight.detach()
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0
