"""Statistics of one cell's timings: percentiles, spread, the unstable flag, stalls, and the
speed-up's confidence interval from per-round ratios.

Pure Python on a list of seconds, so it is tested on synthetic timings without any toolchain.
Percentiles interpolate linearly between order statistics (numpy's default method), which is
what ``benchmark_app`` and most dashboards report as a median.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.results import Latency, Stalls

DEFAULT_CV_THRESHOLD = 0.10


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(seconds: list[float], items_per_sample: int, cv_threshold: float = DEFAULT_CV_THRESHOLD) -> Latency:
    """Latency figures in milliseconds, throughput in items/s, and whether the cell is unstable.

    ``items_per_sample`` is what one timed sample processed (batch x requests in flight), so
    throughput is total items over total timed seconds. The coefficient of variation is the
    sample standard deviation over the mean; above ``cv_threshold`` the cell is unstable.
    """
    if not seconds:
        raise ValueError("no timings to summarize")
    ms = sorted(s * 1e3 for s in seconds)
    n = len(ms)
    mean = sum(ms) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / (n - 1)) if n > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    total = sum(seconds)
    return Latency(
        samples=n,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=mean,
        min_ms=ms[0],
        max_ms=ms[-1],
        std_ms=std,
        cv=cv,
        throughput=items_per_sample * n / total if total > 0 else 0.0,
        timed_seconds=total,
        unstable=cv > cv_threshold,
    )


STALL_FACTOR = 5.0  # a sample above this many medians is a stall
STALL_FLAG_SHARE = 0.01  # more stalls than this share of a cell's samples is flagged
CONFIDENCE = 0.95


def stalls(seconds: list[float], factor: float = STALL_FACTOR) -> Stalls:
    """The samples above ``factor`` x the median: counted and reported, never dropped."""
    if not seconds:
        raise ValueError("no timings to look for stalls in")
    ms = sorted(s * 1e3 for s in seconds)
    threshold = factor * percentile(ms, 50)
    over = [v for v in ms if v > threshold]
    return Stalls(
        factor=factor,
        threshold_ms=threshold,
        count=len(over),
        share=len(over) / len(ms),
        worst_ms=over[-1] if over else None,
    )


def round_figure(seconds: list[float], items_per_sample: int, mode: str) -> float:
    """One round's figure of one cell: its median latency (ms) in latency mode, its throughput
    (items/s) in throughput mode. A median per round, so a stall inside a round moves it little."""
    if not seconds:
        raise ValueError("a round without timings")
    if mode == "throughput":
        return items_per_sample * len(seconds) / sum(seconds)
    return percentile(sorted(s * 1e3 for s in seconds), 50)


def round_ratios(eager: list[float], cell: list[float], mode: str) -> list[float]:
    """Per-round speed-ups over the rounds both were timed in (the first ``len(cell)``): eager's
    median over the cell's in latency mode, the cell's throughput over eager's in throughput mode."""
    pairs = zip(eager, cell, strict=False)
    if mode == "throughput":
        return [c / e for e, c in pairs if e > 0]
    return [e / c for e, c in pairs if c > 0]


@dataclass(frozen=True)
class RatioInterval:
    """A speed-up with its confidence interval; ``level`` is the interval's coverage."""

    value: float
    low: float
    high: float
    level: float
    rounds: int

    @property
    def half_width(self) -> float:
        """Half the interval relative to the value: 0.025 is +-2.5 %."""
        return (self.high - self.low) / (2 * self.value) if self.value > 0 else math.inf


def _binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def ratio_interval(ratios: list[float], confidence: float = CONFIDENCE) -> RatioInterval:
    """The median of per-round ratios and its distribution-free confidence interval.

    The interval runs between two order statistics of the sorted ratios, chosen so that the
    true median lies outside it with probability at most ``1 - confidence`` (the sign test's
    binomial count), assuming only that rounds are independent. No normality: a round hit by a
    burst of other work is one outlier that moves one order statistic, where a t-interval's mean
    and spread would both follow it; and unlike a bootstrap it keeps its coverage at a handful of
    rounds. Six rounds are the fewest for 95 % (min..max covers 1 - 2/64); with fewer the
    interval is min..max and ``level`` says its lower coverage.
    """
    if not ratios:
        raise ValueError("no per-round ratios")
    values = sorted(ratios)
    n = len(values)
    # The largest k with P(X < k) <= (1 - confidence) / 2: the interval is values[k-1]..values[n-k].
    alpha = (1 - confidence) / 2
    k = 1
    while k < n // 2 + 1 and _binomial_cdf(k, n) <= alpha:
        k += 1
    level = 1 - 2 * _binomial_cdf(k - 1, n)
    low, high = (values[k - 1], values[n - k]) if n > 1 else (values[0], values[0])
    return RatioInterval(value=percentile(values, 50), low=low, high=high, level=level, rounds=n)
