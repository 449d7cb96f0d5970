"""The suite file ``kiln fleet`` and ``make bench`` share (``benchmarks/suite.toml``).

```toml
[settings]                 # BenchSettings overriding every model's [bench] (only the keys given)
threads = 2
min_seconds = 1.5

[[model]]
config = "mobilenet/kiln.toml"          # relative to the suite file
targets = ["onnxruntime", "openvino:int8"]   # optional: NAME[:PRECISION] selectors, as --target
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.config import BenchSettings, KilnConfig, TargetConfig, load_config, with_targets
from kiln.errors import ConfigError


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str
    targets: list[str] = []


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: BenchSettings = Field(default_factory=BenchSettings)
    model: list[ModelEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Suite:
    path: Path
    settings: BenchSettings  # only the keys the suite sets count as overrides
    configs: tuple[tuple[Path, KilnConfig], ...]  # each model's kiln.toml and its config (eager added)

    def bench_settings(self, config: KilnConfig) -> BenchSettings:
        """The model's [bench] with the suite's settings over it, as ``make bench`` measures."""
        return config.bench.merged(self.settings)


def with_eager(config: KilnConfig) -> KilnConfig:
    """Every benchmark compares with eager, as ``kiln bench`` does (an ONNX source has none)."""
    from kiln.sources import source_kind

    if source_kind(config.model.source) == "onnx" or any(t.name == "eager" for t in config.target):
        return config
    return config.model_copy(update={"target": [TargetConfig(name="eager"), *config.target]})


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
    configs = []
    for entry in data.model:
        config_path = (path.parent / entry.config).resolve()
        config = with_eager(with_targets(load_config(config_path), entry.targets))
        if not only or config.model.name in only:
            configs.append((config_path, config))
    if not configs:
        raise ConfigError(f"{path}: no model named {', '.join(only)}; choose among the suite's models")
    names = [c.model.name for _, c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two models share a [model].name ({names}); names key the store and the report")
    return Suite(path.resolve(), data.settings, tuple(configs))
