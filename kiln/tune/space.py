"""The search space, from the registry: which target x precision can be built, gated and timed
here for this config, and which quantizer settings each target's options model declares
(:attr:`~kiln.targets.base.TargetOptions.search_space`, beside the options it searches).

Nothing here imports a toolchain. Variants change one setting at a time from the base options
(the config's own ``options`` for that target x precision, else the defaults): the full product
grows past any budget, and each setting is seen alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.config import KilnConfig, TargetConfig, parse_selector
from kiln.errors import ConfigError
from kiln.targets import BASELINE, REGISTRY, available_here, implementation, target_options
from kiln.tune.records import Skipped


@dataclass(frozen=True)
class Variant:
    """One artifact to build: a target x precision with its options, and its folder's name."""

    target: TargetConfig
    stage: str
    changed: tuple[str, Any] | None = None  # the one option set away from the base

    @property
    def id(self) -> str:
        if self.changed is None:
            return self.target.key
        name, value = self.changed
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        return f"{self.target.key}.{name}-{shown}"


def _base(config: KilnConfig, name: str, precision: str) -> TargetConfig:
    """The config's own row for a target x precision (its options and tolerance), dense; else
    the registry's defaults."""
    for t in config.target:
        if t.name == name and t.precision == precision:
            return t.model_copy(update={"prune": None})
    return TargetConfig(name=name, precision=precision)


def _why_not(config: KilnConfig, target: TargetConfig, source_kind: str) -> str | None:
    name, precision = target.name, target.precision
    spec = REGISTRY[name]
    row = spec.precision(precision)
    avail = available_here(target)
    if not avail.build:
        return f"cannot build here: {avail.reason}"
    if not avail.run:
        return f"cannot be timed here: {avail.reason}"
    if spec.consumes == "program" and source_kind == "onnx":
        return "builds from the torch.export program and the source is an ONNX file"
    if row.calibrates and config.calibration is None:
        return "calibrates on data and the config has no [calibration] (add one to search it)"
    issues = dict(spec.known_issues)
    if config.model.task == "text-generation":
        issues |= dict(spec.lm_known_issues)
    if precision in issues:
        return f"known issue: {issues[precision]}"
    return None


def _selected(name: str, precision: str, selectors: tuple[str, ...]) -> bool:
    return not selectors or any(parse_selector(s).matches(name, precision) for s in selectors)


def check_selectors(selectors: tuple[str, ...]) -> None:
    """``--target NAME[:PRECISION]`` names a registered target x precision (one line if not)."""
    from kiln.targets import check_target

    for selector in selectors:
        parsed = parse_selector(selector)
        check_target(parsed.name, parsed.precision or "fp32")


def enumerate_space(
    config: KilnConfig, source_kind: str, selectors: tuple[str, ...] = ()
) -> tuple[list[Variant], list[Skipped]]:
    """Every target x precision of the registry (eager first, as the baseline), with the base
    options, that can be built and timed here (only those ``selectors`` name, when given); the
    rest with why not. A target searched at any precision is also built at fp32 (stage 1 ranks
    the runtimes by it)."""
    check_selectors(selectors)
    kept: list[Variant] = [Variant(TargetConfig(name=BASELINE), "float")]
    skipped: list[Skipped] = []
    for name, spec in REGISTRY.items():
        if name == BASELINE or (selectors and not any(parse_selector(s).name == name for s in selectors)):
            continue
        for row in spec.precisions:
            if row.name != "fp32" and not _selected(name, row.name, selectors):
                continue
            base = _base(config, name, row.name)
            why = _why_not(config, base, source_kind)
            if why is not None:
                skipped.append(Skipped(target=name, precision=row.name, reason=why))
                continue
            stage = "float" if row.name == "fp32" else "precisions"
            kept.append(Variant(base, stage))
    return kept, skipped


def axes(name: str, precision: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The option axes its options model declares for a target x precision."""
    return list(implementation(name).options_model.search_space.get(precision, ()))


def option_variants(base: TargetConfig) -> list[Variant]:
    """One variant per other value of each axis, each validated by the target's own options
    model (a value it refuses for this precision is left out)."""
    out = []
    for option, values in axes(base.name, base.precision):
        for value in values:
            if base.options.get(option) == value:
                continue
            target = base.model_copy(update={"options": {**base.options, option: value}})
            try:
                target_options(target)
            except ConfigError:
                continue
            out.append(Variant(target, "options", (option, value)))
    return out


def thread_counts(physical_cores: int) -> list[int]:
    return list(range(1, physical_cores + 1))


def request_counts(threads: int, mode: str) -> list[int]:
    """Requests in flight to try per thread count: one in latency mode; in throughput mode the
    harness's default (max(2, threads)) and twice the threads, where the runtime queues them."""
    if mode == "latency":
        return [1]
    return sorted({max(2, threads), 2 * threads})
