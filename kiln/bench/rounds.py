"""The adaptive rounds rule: which cells get another interleaved round.

Every live cell is timed in the first ``rounds`` rounds. After that, a cell whose speed-up
interval (:func:`kiln.bench.stats.ratio_interval` over its per-round ratios to eager) is wider
than +-``ci_target`` gets another round, together with eager (its ratios need eager's rounds), up
to ``max_rounds`` or until the batch's rounds have run ``max_seconds`` (a budget, so a noisy
machine cannot stretch a suite without end); the others stop, so a quiet cell costs no more time
than before. With ``max_round_steal``, a round in which the hypervisor took more of the CPUs than
that (steal) is dropped for every cell in it and timed again (:func:`too_stolen`). Pure functions of the per-round figures and the time spent, so the rule is tested on
synthetic rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kiln.bench.stats import RatioInterval, ratio_interval, round_ratios
from kiln.config import BenchSettings

BASELINE = "eager-fp32"


def interval(baseline: Sequence[float], cell: Sequence[float], mode: str) -> RatioInterval | None:
    """A cell's speed-up interval from its per-round figures and the baseline's, or ``None``
    before there is a ratio."""
    ratios = round_ratios(list(baseline), list(cell), mode)
    return ratio_interval(ratios) if ratios else None


def continuing(
    figures: Mapping[str, Sequence[float]], done: int, settings: BenchSettings, spent: float = 0.0
) -> list[str]:
    """The cells (keys of ``figures``, the per-round figures of each live cell, in their order)
    to time in the next round, after ``done`` rounds that took ``spent`` seconds; ``[]`` ends
    the batch."""
    assert settings.max_rounds is not None and settings.ci_target is not None  # resolved
    if done < settings.rounds:
        return list(figures)
    if done >= settings.max_rounds or BASELINE not in figures or out_of_time(spent, settings):
        return []
    base = figures[BASELINE]
    wide = []
    for key, rounds in figures.items():
        if key == BASELINE:
            continue
        found = interval(base, rounds, settings.mode)
        if found is not None and found.half_width > settings.ci_target:
            wide.append(key)
    return [BASELINE, *wide] if wide else []


def out_of_time(spent: float, settings: BenchSettings) -> bool:
    """Whether a batch's rounds have used up the ``max_seconds`` budget (never, without one)."""
    return settings.max_seconds is not None and spent >= settings.max_seconds


def too_stolen(steal: float | None, dropped: int, settings: BenchSettings) -> bool:
    """Whether a round the hypervisor took ``steal`` of the CPUs' time in is dropped, after
    ``dropped`` rounds of its batch were: above ``max_round_steal``, while fewer than
    ``max_rounds`` were dropped (so a VM stolen from all the time still ends; its rounds then
    count, and their steal is on record)."""
    assert settings.max_rounds is not None  # resolved
    limit = settings.max_round_steal
    return limit is not None and steal is not None and steal > limit and dropped < settings.max_rounds
