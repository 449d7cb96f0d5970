"""Statistics on synthetic timings: percentiles, spread, throughput and the unstable flag."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.bench.stats import percentile, summarize


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = sorted(np.random.default_rng(0).exponential(1.0, 101).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_interpolates_between_samples() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_reports_milliseconds_and_sample_std() -> None:
    seconds = [0.001, 0.002, 0.003, 0.004, 0.010]
    s = summarize(seconds, items_per_sample=8)
    ms = np.array(seconds) * 1e3
    assert s.samples == 5
    assert s.p50_ms == pytest.approx(3.0)
    assert s.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert s.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(10.0)
    assert s.mean_ms == pytest.approx(ms.mean())
    assert s.std_ms == pytest.approx(ms.std(ddof=1))
    assert s.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert s.throughput == pytest.approx(8 * 5 / sum(seconds))


def test_summarize_flags_unstable_only_above_threshold() -> None:
    steady = [0.010, 0.0101, 0.0099, 0.0100, 0.0102, 0.0098]
    noisy = [0.010, 0.030, 0.010, 0.011, 0.050, 0.010]
    assert summarize(steady, 1, cv_threshold=0.1).unstable is False
    assert summarize(noisy, 1, cv_threshold=0.1).unstable is True
    assert summarize(noisy, 1, cv_threshold=5.0).unstable is False


def test_summarize_single_sample_has_zero_spread() -> None:
    s = summarize([0.004], 1)
    assert s.std_ms == 0.0 and s.cv == 0.0 and s.p99_ms == pytest.approx(4.0)


def test_summarize_rejects_no_timings() -> None:
    with pytest.raises(ValueError):
        summarize([], 1)
