"""Latency statistics: properties that must hold for any sample (hypothesis) and hand-checked cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilec.errors import MobilecError
from mobilec.profile import stats

latencies = st.lists(st.floats(min_value=1e-4, max_value=1e4, allow_nan=False, allow_infinity=False), min_size=1, max_size=200)


@settings(max_examples=40, deadline=None)
@given(latencies)
def test_summary_is_ordered_and_bounded(xs):
    s = stats.summarize(xs)
    tol = 1e-9 * max(1.0, max(xs))
    assert s["min"] - tol <= s["p10"] <= s["p50"] + tol <= s["p90"] + 2 * tol <= s["max"] + 3 * tol
    assert s["min"] - tol <= s["trimmed_mean"] <= s["max"] + tol
    assert s["min"] - tol <= s["mean"] <= s["max"] + tol
    assert s["std"] >= 0 and s["n"] == len(xs)


@settings(max_examples=50, deadline=None)
@given(latencies, st.randoms(use_true_random=False))
def test_order_does_not_matter(xs, rnd):
    ys = list(xs)
    rnd.shuffle(ys)
    a, b = stats.summarize(xs), stats.summarize(ys)
    for k in ("p10", "p50", "p90", "trimmed_mean", "min", "max"):
        assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(latencies, st.floats(min_value=-1e3, max_value=1e3), st.floats(min_value=0.01, max_value=100))
def test_affine_equivariance(xs, shift, scale):
    a = stats.summarize(xs)
    b = stats.summarize([x * scale + shift for x in xs])
    for k in ("p10", "p50", "p90", "trimmed_mean", "mean", "min", "max"):
        assert b[k] == pytest.approx(a[k] * scale + shift, rel=1e-9, abs=1e-6)
    assert b["std"] == pytest.approx(a["std"] * scale, rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=10, max_size=100), st.floats(min_value=1e3, max_value=1e9))
def test_trimmed_mean_ignores_one_outlier(xs, outlier):
    """With n >= 10, 10 % trimming drops at least one sample from each end: one huge outlier cannot move it."""
    base = sorted(xs)
    with_outlier = [*base[:-1], outlier]
    # exact statement: replacing the maximum by any larger value leaves the trimmed mean unchanged
    assert stats.trimmed_mean(with_outlier) == pytest.approx(stats.trimmed_mean(base), rel=1e-12)


def test_trimmed_mean_hand_case():
    assert stats.trimmed_mean([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000]) == pytest.approx(5.5)
    assert stats.trimmed_mean([5.0]) == 5.0
    assert stats.trimmed_mean([1, 2, 3], proportion=0.0) == pytest.approx(2.0)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.01, max_value=100), st.integers(min_value=1, max_value=50))
def test_constant_samples(c, n):
    s = stats.summarize([c] * n)
    assert s["p10"] == s["p50"] == s["p90"] == s["min"] == s["max"] == pytest.approx(c)
    assert s["std"] == pytest.approx(0.0, abs=1e-9 * c)


@settings(max_examples=40, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=6))
def test_repetition_spread(reps):
    sp = stats.repetition_spread(reps)
    p50s = [float(np.percentile(r, 50)) for r in reps]
    assert sp["p50_per_repetition"] == pytest.approx(p50s)
    assert sp["spread_ms"] == pytest.approx(max(p50s) - min(p50s))
    assert sp["spread_ms"] >= 0 and sp["spread_rel"] >= 0
    if len(reps) == 1:
        assert sp["spread_ms"] == 0


def test_percentile_matches_numpy_and_bad_input():
    xs = [3.0, 1.0, 2.0, 10.0]
    assert stats.percentile(xs, 50) == pytest.approx(2.5)
    assert stats.percentile(xs, 90) == pytest.approx(np.percentile(xs, 90))
    with pytest.raises(MobilecError, match="no latency samples"):
        stats.summarize([])
    with pytest.raises(MobilecError, match="NaN"):
        stats.summarize([1.0, float("nan")])
    with pytest.raises(ValueError):
        stats.percentile(xs, 101)
