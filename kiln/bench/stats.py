"""Statistics of one cell's timings: percentiles, spread and the unstable flag.

Pure Python on a list of seconds, so it is tested on synthetic timings without any toolchain.
Percentiles interpolate linearly between order statistics (numpy's default method), which is
what ``benchmark_app`` and most dashboards report as a median.
"""

from __future__ import annotations

import math

from kiln.results import Latency

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
