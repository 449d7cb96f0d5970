"""The build plan: every target x precision checked by the registry, and every stage's cache
key derived from content (source bytes, config, data files, toolchain versions) without importing
torch, so an unchanged rebuild is decided in about a second. Also the rows a config expands to:
one model per adapter, an ensemble's members beside it, one target alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.capture.sources import source_files, source_kind
from kiln.config import KilnConfig, TargetConfig, Tolerance
from kiln.errors import ConfigError
from kiln.manifest import (
    MANIFEST_SCHEMA,
)
from kiln.store import (
    cache_key,
    hash_files,
)
from kiln.targets import (
    REGISTRY,
    Availability,
    Precision,
    TargetSpec,
    available_here,
    check_config,
    qat_applies,
    tolerance_for,
)
from kiln.versions import CORE, versions

if TYPE_CHECKING:
    from kiln.targets.base import TargetOptions

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TargetPlan:
    """One target as planned: its registry row, validated options, cache keys, availability."""

    target: TargetConfig
    spec: TargetSpec
    precision: Precision  # the registry's row for target.precision
    options: TargetOptions
    tolerance: Tolerance  # the precision's defaults with the config's overrides
    key: str  # the target stage's cache key
    export_key: str  # the export stage it builds from (the dense one or a pruned variant's)
    available: Availability

    @property
    def label(self) -> str:
        return f"{self.target.name}:{self.target.precision}"


@dataclass(frozen=True)
class BuildPlan:
    config: KilnConfig
    model_dir: Path
    export_key: str
    targets: dict[str, TargetPlan] = field(default_factory=dict)  # by target key
    # A variant (prune slug, or member-<name> of an ensemble) -> its export stage's key.
    variant_keys: dict[str, str] = field(default_factory=dict)


def plan(config: KilnConfig, out_root: Path) -> BuildPlan:
    """Check every target with the registry, then derive every stage's cache key from content:
    source bytes, config, data files, toolchain versions. An ensemble's members get their own
    rows here (:func:`with_members`), so every caller plans, builds and benches them alike."""
    config = with_members(config)
    checked = check_config(config, source_kind(config.model.source))
    tokenizer = tokenizer_dir(config)
    tokenizer_files = sorted(p for p in tokenizer.glob("*") if p.is_file()) if tokenizer else []
    data_files = [
        f
        for what, spec in (("[calibration]", config.calibration), ("[evaluation]", config.evaluation))
        if spec
        for f in _data_files(spec.source, config.root, what)
    ]
    data_key = hash_files(data_files, config.root)
    export_inputs = {
        "kiln": __version__,
        "source": hash_files(source_files(config.model, config.root) + tokenizer_files, config.root),
        # Whether members are also built alone changes no artifact.
        "model": config.model.model_dump(mode="json", exclude={"ensemble": {"compare_members"}}),
        "export": config.export.model_dump(mode="json"),
        "versions": versions(CORE),
    }
    if (distillation := _distill_inputs(config, data_key)) is not None:
        export_inputs["distillation"] = distillation  # the captured model is the distilled student
    export_key = cache_key(export_inputs)
    variant_keys = _variant_keys(config, export_key, data_key)
    targets: dict[str, TargetPlan] = {}
    for target in config.target:
        spec = REGISTRY[target.name]
        stage = variant_keys[target.variant] if target.variant else export_key
        key = cache_key(
            {
                "manifest": MANIFEST_SCHEMA,
                "export": stage,
                "target": target.model_dump(mode="json"),
                "data": data_key,
                "calibration": config.calibration.model_dump(mode="json") if config.calibration else None,
                "evaluation": config.evaluation.model_dump(mode="json") if config.evaluation else None,
                "gates": config.gates.model_dump(mode="json"),
                # The bars in force (a causal LM's too): new defaults re-judge what was built.
                "tolerance": [tolerance_for(target, generative=g).model_dump(mode="json") for g in (False, True)],
                "generation": config.generation.model_dump(mode="json"),
                "generation_data": hash_files(_generation_files(config), config.root),
                "versions": versions(spec.dists(target.precision)),
                **_qat_inputs(config, target),
            }
        )
        options = checked[target.key]
        targets[target.key] = TargetPlan(
            target,
            spec,
            spec.precision(target.precision),
            options,
            tolerance_for(target),
            key,
            stage,
            available_here(target, options),
        )
    return BuildPlan(config, out_root / config.model.name, export_key, targets, variant_keys)


def _recovery_files(config: KilnConfig) -> list[Path]:
    return _data_files(config.recovery.source, config.root) if config.recovery else []


def _distill_inputs(config: KilnConfig, data_key: str) -> dict[str, Any] | None:
    """What a distilled student depends on beyond its source: the recovery settings and data and
    the teacher's files (``None`` without ``[recovery].teacher``)."""
    from kiln.train.distill import teacher_model

    recovery = config.recovery
    if recovery is None or recovery.teacher is None:
        return None
    return {
        "recovery": recovery.model_dump(mode="json", exclude={"qat", "qat_epochs"}),
        "recovery_data": hash_files(_recovery_files(config), config.root),
        "teacher": hash_files(source_files(teacher_model(config), config.root), config.root),
        "data": data_key,  # the metrics before and after, in the report
    }


def _qat_inputs(config: KilnConfig, target: TargetConfig) -> dict[str, Any]:
    """A quantization-aware artifact's extra cache-key inputs: the recovery settings and data."""
    if not qat_applies(config, target):
        return {}
    assert config.recovery is not None
    return {
        "qat": config.recovery.model_dump(mode="json"),
        "qat_data": hash_files(_recovery_files(config), config.root),
    }


def tokenizer_dir(config: KilnConfig) -> Path | None:
    """``[generation].tokenizer``: the tokenizer of a factory's causal LM (hf: folders carry theirs)."""
    ref = config.generation.tokenizer
    if ref is None:
        return None
    folder = config.root / ref
    if not folder.is_dir():
        raise ConfigError(f"[generation].tokenizer {folder} is not a folder; point it at a saved tokenizer")
    return folder


def _generation_files(config: KilnConfig) -> list[Path]:
    """The prompt and held-out text files of the generation gate."""
    spec = config.generation
    refs = [r for r in (spec.heldout, spec.prompts if isinstance(spec.prompts, str) else None) if r]
    return [config.root / r for r in refs if (config.root / r).is_file()]


def _variant_keys(config: KilnConfig, export_key: str, data_key: str) -> dict[str, str]:
    recovery = config.recovery
    recovery_files = _recovery_files(config)
    keys: dict[str, str] = {}
    for target in config.target:
        if target.member and target.variant not in keys:
            keys[f"member-{target.member}"] = cache_key({"export": export_key, "member": target.member})
        if target.prune and target.prune.slug not in keys:
            keys[target.prune.slug] = cache_key(
                {
                    "export": export_key,
                    "prune": target.prune.model_dump(mode="json"),
                    "recovery": recovery.model_dump(mode="json") if recovery else None,
                    "recovery_data": hash_files(recovery_files, config.root),
                    "data": data_key,  # data-driven importance and the metric before/after recovery
                    "versions": versions(("torch-pruning",)),
                }
            )
    return keys


def _data_files(source: str, root: Path, what: str = "data") -> list[Path]:
    """Files whose bytes define a data spec: the callable's module, a .npz, or a folder of arrays.
    A file or folder that does not exist is one line now, before any export."""
    ref, _, _ = source.partition(":") if source.split(":", 1)[0].endswith(".py") else (source, "", "")
    path = root / ref
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.np[yz]"))
    if ref.endswith((".py", ".npz", ".npy")) or "/" in ref or ":" not in source:
        raise ConfigError(f"{what} source {path} does not exist; check the path (relative to the config's folder)")
    return []  # package.module:fn, found on import


def per_adapter(config: KilnConfig) -> list[KilnConfig]:
    """A list of adapters is one model each (``<name>-<adapter folder>``): its own capture,
    artifacts and gate; one adapter (or none) keeps the model's name."""
    adapters = config.model.adapters
    if len(adapters) < 2:
        return [config]
    stems = [Path(a).name or f"adapter{i}" for i, a in enumerate(adapters)]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"[model].adapter folders need distinct names to name their models, got {stems}")
    return [
        config.model_copy(
            update={"model": config.model.model_copy(update={"adapter": a, "name": f"{config.model.name}-{stem}"})}
        )
        for a, stem in zip(adapters, stems, strict=True)
    ]


def with_members(config: KilnConfig) -> KilnConfig:
    """An ensemble whose members are compared: after each unpruned target, the same target for
    every member alone (``<key>-member-<name>``), gated against that member's eager model."""
    spec = config.model.ensemble
    if spec is None or not spec.compare_members:
        return config
    rows: list[TargetConfig] = []
    for target in config.target:
        rows.append(target)
        if target.prune is None and target.member is None:
            rows += [target.model_copy(update={"member": name}) for name in spec.member_names()]
    unique = {row.key: row for row in rows}  # a member row the config also lists is kept once
    return config.model_copy(update={"target": list(unique.values())})


def one_target(config: KilnConfig, target: TargetConfig) -> KilnConfig:
    """The config with ``target`` as its only row (no member rows added: a member is its own row)."""
    model = config.model
    if model.ensemble is not None:
        model = model.model_copy(update={"ensemble": model.ensemble.model_copy(update={"compare_members": False})})
    return config.model_copy(update={"model": model, "target": [target]})


def distilled_key(export_key: str) -> str:
    """The store key of a distilled student's ``distilled/`` folder (the fleet shares it)."""
    return cache_key({"stage": "distilled", "export": export_key})
