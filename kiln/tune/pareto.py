"""The Pareto front and the winner, on the figures alone (no toolchain, no I/O).

A candidate is scored on three figures, each better when smaller: its cost (p50 latency, or the
negated throughput), its metric drop (0 where the config has no [evaluation]: every candidate
then passed the parity gate alone, which is all that is known) and its size. One candidate
dominates another when it is no worse on all three and better on one; the front is what no
measured candidate dominates, and the winner the front's fastest (ties: smaller drop, then size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kiln.tune.records import Candidate, Objective


def cost(candidate: Candidate, objective: Objective) -> float:
    """The speed figure the objective minimises; infinite where nothing was measured."""
    m = candidate.latest
    if m is None:
        return math.inf
    return m.p50_ms if objective == "latency" else -m.throughput


def score(candidate: Candidate, objective: Objective) -> tuple[float, float, float]:
    drop = candidate.metric_drop if candidate.metric_drop is not None else 0.0
    size = float(candidate.size_bytes) if candidate.size_bytes is not None else math.inf
    return cost(candidate, objective), max(drop, 0.0), size


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front(candidates: Sequence[Candidate], objective: Objective) -> list[Candidate]:
    """The measured candidates no other measured candidate dominates, fastest first."""
    measured = [c for c in candidates if c.status == "measured" and c.latest is not None]
    scores = {c.id: score(c, objective) for c in measured}
    kept = [c for c in measured if not any(dominates(scores[o.id], scores[c.id]) for o in measured if o is not c)]
    return sorted(kept, key=lambda c: scores[c.id])


def winner(candidates: Sequence[Candidate], objective: Objective) -> Candidate | None:
    """The front's fastest: every measured candidate passed its gate, so speed decides."""
    on_front = front(candidates, objective)
    return on_front[0] if on_front else None


def mark(candidates: Sequence[Candidate], objective: Objective) -> Candidate | None:
    """Set ``front`` and ``winner`` on every candidate; returns the winner."""
    on_front = {c.id for c in front(candidates, objective)}
    best = winner(candidates, objective)
    for c in candidates:
        c.front = c.id in on_front
        c.winner = best is not None and c.id == best.id
    return best


def within(value: float, best: float, factor: float, objective: Objective) -> bool:
    """Whether a cost is close enough to the best one to be worth searching further: at most
    ``factor`` times the best latency, or at least the best throughput over ``factor``."""
    if math.isinf(value):
        return False
    if objective == "latency":
        return value <= best * factor
    return -value >= -best / factor
