"""TensorRT optimization profiles, derived from the input spec's named dims; no TensorRT needed.

A profile gives every input a min, opt and max shape. By default there is one profile, taken from
``[model].dims``. ``options.profiles`` may ask for several (a list of ``{dim = {min, opt, max}}``
tables): TensorRT tunes kernels for each ``opt``, and the runner picks, per call, the first
profile whose range holds the call's shapes. Every range is validated here, before any build:
``1 <= min <= opt <= max``, inside the range the model was captured for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError, DataError
from kiln.spec import SUM, Signature

PROFILES = "profiles.json"


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def contains(self, size: int) -> bool:
        return self.min <= size <= self.max


@dataclass(frozen=True)
class InputShapes:
    """One input's shapes in one profile: what ``IOptimizationProfile.set_shape`` takes."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )


@dataclass(frozen=True)
class Profile:
    dims: dict[str, DimRange]
    inputs: tuple[InputShapes, ...]

    def contains(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        return all(spec.contains(shapes[spec.name]) for spec in self.inputs if spec.name in shapes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dims": {name: {"min": r.min, "opt": r.opt, "max": r.max} for name, r in self.dims.items()},
            "inputs": {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for s in self.inputs},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            dims={name: DimRange(r["min"], r["opt"], r["max"]) for name, r in data["dims"].items()},
            inputs=tuple(
                InputShapes(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
                for name, s in data["inputs"].items()
            ),
        )


def _checked_range(dim: str, values: dict[str, Any], sig: Signature, where: str) -> DimRange:
    if not isinstance(values, dict) or not {"min", "max"} <= set(values) or set(values) - {"min", "opt", "max"}:
        raise ConfigError(f"{where}: dim {dim!r} needs a table {{ min, opt, max }}, got {values!r}")
    low, high = values["min"], values["max"]
    opt = values.get("opt", low)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, opt, high)):
        raise ConfigError(f"{where}: dim {dim!r} sizes must be integers, got {values!r}")
    if not 1 <= low <= opt <= high:
        raise ConfigError(
            f"{where}: dim {dim!r} needs 1 <= min <= opt <= max, got min={low} opt={opt} max={high}; fix the range"
        )
    captured = sig.dims[dim]
    if low < captured.min or high > captured.max:
        raise ConfigError(
            f"{where}: dim {dim!r} range {low}..{high} leaves the captured range {captured.min}..{captured.max}; "
            "widen [model].dims or narrow the profile"
        )
    return DimRange(low, opt, high)


def _size(ranges: dict[str, DimRange], dim: str, point: str) -> int:
    """A dim's size at a profile point; a sum of dims (``past+sequence``) from its parts."""
    return sum(getattr(ranges[part], point) for part in dim.split(SUM))


def _profile(sig: Signature, ranges: dict[str, DimRange]) -> Profile:
    inputs = []
    for spec in sig.inputs:
        shapes = {
            point: tuple(s if isinstance(s, int) else _size(ranges, s, point) for s in spec.shape)
            for point in ("min", "opt", "max")
        }
        inputs.append(InputShapes(spec.name, shapes["min"], shapes["opt"], shapes["max"]))
    return Profile(ranges, tuple(inputs))


def derive_profiles(sig: Signature, requested: list[dict[str, Any]] | None = None) -> list[Profile]:
    """The profiles to build: one from the spec's dims, or the ones ``options.profiles`` asks for
    (dims a requested profile leaves out keep the spec's range)."""
    base = {
        name: _checked_range(name, {"min": d.min, "opt": d.best, "max": d.max}, sig, "[model].dims")
        for name, d in sig.dims.items()
    }
    if not requested:
        return [_profile(sig, base)]
    if not isinstance(requested, list):
        raise ConfigError(
            f"tensorrt options.profiles must be a list of {{ dim = {{ min, opt, max }} }} tables, got {requested!r}"
        )
    profiles = []
    for i, entry in enumerate(requested):
        where = f"tensorrt options.profiles[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table of dims, got {entry!r}")
        if unknown := sorted(set(entry) - set(sig.dims)):
            raise ConfigError(f"{where}: unknown dim {unknown[0]!r}; the input spec names {sorted(sig.dims)}")
        ranges = {**base, **{dim: _checked_range(dim, values, sig, where) for dim, values in entry.items()}}
        profiles.append(_profile(sig, ranges))
    return profiles


def write_profiles(profiles: list[Profile], folder: Path) -> Path:
    path = folder / PROFILES
    path.write_text(json.dumps([p.to_dict() for p in profiles], indent=2))
    return path


def read_profiles(folder: Path) -> list[Profile]:
    return [Profile.from_dict(item) for item in json.loads((folder / PROFILES).read_text())]


def pick_profile(profiles: list[Profile], shapes: dict[str, tuple[int, ...]]) -> int:
    """The index of the first profile whose ranges hold ``shapes``; a one-line error otherwise."""
    for index, profile in enumerate(profiles):
        if profile.contains(shapes):
            return index
    ranges = "; ".join(", ".join(f"{d} {r.min}..{r.max}" for d, r in p.dims.items()) or "static" for p in profiles)
    raise DataError(
        f"input shapes {shapes} fit no optimization profile of this engine ({ranges}); rebuild with wider dims"
    )
