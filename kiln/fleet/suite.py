"""The suite file ``kiln fleet`` and ``make bench`` share (``benchmarks/suite.toml``).

```toml
[settings]                 # BenchSettings overriding every model's [bench] (only the keys given)
threads = 2
min_seconds = 1.5

[[model]]
config = "mobilenet/kiln.toml"          # relative to the suite file
targets = ["onnxruntime", "openvino:int8"]   # optional: NAME[:PRECISION] selectors, as --target
settings = { threads = 1 }              # optional: this model's own overrides of [settings]
requires = "tinyllm/model/config.json"  # optional: a file the model needs; missing, the model is
requires_hint = "run `make tinyllm`"    #   skipped with this hint (both paths relative to the suite)
```

``make bench`` (benchmarks/run_suite.py) and ``kiln fleet`` both read it here, so the two paths
cannot disagree on what a suite means.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.config import BenchSettings, KilnConfig, TargetConfig, load_config, with_targets
from kiln.errors import ConfigError
from kiln.targets import BASELINE


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str
    targets: list[str] = []
    settings: BenchSettings = Field(default_factory=BenchSettings)  # only the keys given count
    requires: str | None = None
    requires_hint: str | None = None


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: BenchSettings = Field(default_factory=BenchSettings)
    model: list[ModelEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Suite:
    path: Path
    settings: BenchSettings  # only the keys the suite sets count as overrides
    configs: tuple[tuple[Path, KilnConfig], ...]  # each model's kiln.toml and its config (eager added)
    entries: dict[str, ModelEntry]  # by model name, for the models in ``configs``
    skipped: tuple[tuple[str, str], ...] = ()  # (model, why) for entries whose ``requires`` is missing

    def overrides(self, name: str) -> BenchSettings:
        """What overrides the model's [bench]: the suite's settings, then the entry's own."""
        return self.settings.merged(self.entries[name].settings)

    def bench_settings(self, config: KilnConfig) -> BenchSettings:
        """The model's [bench] with the suite's settings over it, as ``make bench`` measures."""
        return config.bench.merged(self.overrides(config.model.name))


def with_eager(config: KilnConfig) -> KilnConfig:
    """Every benchmark compares with eager, as ``kiln bench`` does (an ONNX source has none)."""
    from kiln.capture.sources import source_kind

    if source_kind(config.model.source) == "onnx" or any(t.name == BASELINE for t in config.target):
        return config
    return config.model_copy(update={"target": [TargetConfig(name=BASELINE), *config.target]})


def load_suite(path: Path, only: tuple[str, ...] = ()) -> Suite:
    """Read the suite and every model's config (``only``: keep the models with these names)."""
    if not path.is_file():
        raise ConfigError(f"suite {path} not found; pass a suite.toml (see benchmarks/suite.toml)")
    try:
        data = SuiteFile.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax and run again") from err
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}; fix the suite and run again") from err
    configs, entries, skipped = [], {}, []
    for entry in data.model:
        config_path = (path.parent / entry.config).resolve()
        if entry.requires is not None and not (needed := (path.parent / entry.requires).resolve()).exists():
            name = _model_name(config_path)
            if not only or name in only:
                hint = f" ({entry.requires_hint})" if entry.requires_hint else ""
                skipped.append((name, f"skipped, {needed} is missing{hint}"))
            continue
        config = with_eager(with_targets(load_config(config_path), entry.targets))
        if not only or config.model.name in only:
            configs.append((config_path, config))
            if config.model.name in entries:
                raise ConfigError(
                    f"{path}: two models share a [model].name ({config.model.name}); names key the store and the report"
                )
            entries[config.model.name] = entry
    if not configs and not skipped:
        raise ConfigError(f"{path}: no model named {', '.join(only)}; choose among the suite's models")
    return Suite(path.resolve(), data.settings, tuple(configs), entries, tuple(skipped))


def _model_name(config_path: Path) -> str:
    """A config's [model].name, read without loading the model it names (whose files may be absent)."""
    try:
        return str(tomllib.loads(config_path.read_text())["model"]["name"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return config_path.parent.name
