"""The accuracy-controlled search's pieces: which fallback settings a breached build tries, and
what each attempt leaves in the manifest (``search``).

A weight-only build of a real model can breach its gate with the toolchain's plain defaults (4-bit
round-to-nearest on SmolLM2-135M: teacher-forced agreement 0.65-0.68, perplexity +22-37 %) while a
setting the same toolchain offers passes. Each target's options model lists those settings in the
order to try them (:meth:`kiln.targets.base.TargetOptions.fallbacks`, smallest and fastest first,
as the int8 accuracy control degrades layers one at a time); kiln build tries them until one passes
and records every attempt, so the user sees what was chosen and at what cost, and can pin it.
Settings that change an option the user gave are skipped: what the user pins is never overridden.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kiln.capture.exporters import ExportBundle
from kiln.gate.golden import GOLDEN
from kiln.manifest import Gate, SearchRecord, SearchStep
from kiln.pipeline.planning import TargetPlan
from kiln.targets.base import ModelFacts


def fallbacks(tp: TargetPlan, bundle: ExportBundle, calibration: bool) -> list[dict[str, Any]]:
    """The settings to try after the first breached, minus any that touch an option the user gave."""
    data = calibration or bundle.tokenizer_dir is not None
    facts = ModelFacts(generative=bundle.signature.generative, data=data, gguf=bundle.kind == "gguf")
    given = set(tp.options.model_fields_set)
    return [dict(s) for s in tp.options.fallbacks(tp.target.precision, facts) if not set(s) & given]


def with_options(tp: TargetPlan, update: dict[str, Any]) -> TargetPlan:
    """The plan with ``update`` over its options, validated as the config's own are."""
    model = type(tp.options)
    given = tp.options.model_dump(exclude_unset=True)
    options = model.model_validate({**given, **update}, context={"precision": tp.target.precision})
    return replace(tp, options=options)


def describe(update: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in update.items()) or "the options as given"


def _size(folder: Path) -> int:
    """What the runtime loads: the golden set is not the artifact's size."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.relative_to(folder).parts[0] != GOLDEN)


def search_step(update: dict[str, Any], gate: Gate, folder: Path, seconds: float) -> SearchStep:
    gen = gate.generation
    worst = gate.breaches[0] if gate.breaches else (gen.worst if gen else gate.parity.worst if gate.parity else "")
    return SearchStep(
        settings=update,
        passed=gate.passed,
        forced_top1=gen.forced_top1 if gen else None,
        perplexity_increase=gen.perplexity_increase if gen else None,
        min_cosine=gen.min_cosine if gen else None,
        size_bytes=_size(folder),
        seconds=round(seconds, 3),
        worst=worst,
    )


def search_note(record: SearchRecord) -> str:
    """One line for the artifact's notes: what breached, what was chosen, after how many builds."""
    first = record.tried[0]
    if record.chosen is None:
        return (
            f"accuracy-controlled search: the first setting breached ({first.worst}) and none of the "
            f"{len(record.tried) - 1} fallback settings passed; the last is kept"
        )
    won = record.tried[record.chosen]
    figures = (
        f" (teacher-forced top-1 {won.forced_top1:.3f}, perplexity {won.perplexity_increase:+.2%})"
        if won.forced_top1 is not None and won.perplexity_increase is not None
        else ""
    )
    return (
        f"accuracy-controlled search: the first setting breached ({first.worst}); chose "
        f"{describe(won.settings)}{figures}, build {record.chosen + 1} of {len(record.tried)}"
    )
