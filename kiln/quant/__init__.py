"""Quantization, done natively by each target from the one calibration spec.

Each toolchain has its own module (``ort``, ``nncf``, ``pt2e``), imported only by the target that
uses it. What they share lives here: the refusal to calibrate without data, the check of a
target's ``options`` (the escape hatch is still validated where kiln reads it), and the
too-few-samples warning.
"""

from __future__ import annotations

from typing import Any

from kiln.data import CalibrationSet, warn_few_samples
from kiln.errors import ConfigError
from kiln.targets.base import CompileContext


def require_calibration(ctx: CompileContext, backend: str, guidance: int) -> tuple[CalibrationSet, list[str]]:
    """The calibration set for a static quantizer, or a clear refusal: kiln never calibrates on
    made-up inputs, because random noise gives activation ranges unrelated to real data. Also
    returns the notes for the manifest (a too-small set, against the backend's guidance)."""
    if ctx.calibration is None:
        raise ConfigError(
            f"static {ctx.target.precision} quantization needs calibration data and the config has no "
            "[calibration]; add [calibration] source = 'data.npz' | 'folder/' | 'file.py:fn' "
            "(kiln never calibrates on random inputs), or pick a weight-only or dynamic precision"
        )
    note = warn_few_samples(ctx.calibration, guidance, f"{ctx.target.key} ({backend})")
    return ctx.calibration, [note] if note else []


def option(ctx: CompileContext, name: str, default: Any, choices: tuple[Any, ...] | None = None) -> Any:
    """A target option kiln itself reads, checked against its choices (exit 2 when wrong)."""
    value = ctx.target.options.get(name, default)
    if choices is not None and value not in choices:
        raise ConfigError(f"options.{name} = {value!r} is not one of {', '.join(map(repr, choices))}; fix it")
    return value


def number_option(ctx: CompileContext, name: str, default: float, low: float, high: float) -> float:
    value = ctx.target.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"options.{name} = {value!r} must be a number in [{low}, {high}]; fix it")
    return value
