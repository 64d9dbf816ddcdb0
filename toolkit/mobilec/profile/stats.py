"""Latency statistics: percentiles, trimmed mean, spread across repetitions (pure numpy).

>>> summarize([1.0, 2.0, 3.0, 4.0, 100.0])["p50"]
3.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilec.errors import MobilecError

TRIM_PROPORTION = 0.10


def _as_array(samples: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(samples, dtype=np.float64).ravel()
    if arr.size == 0:
        raise MobilecError("no latency samples to summarise", hint="run at least one timed iteration (runs >= 1)")
    if not np.all(np.isfinite(arr)):
        raise MobilecError("latency samples contain NaN or infinity", hint="the timer or the runtime's report is broken; rerun")
    return arr


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between order statistics (numpy's default)."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    return float(np.percentile(_as_array(samples), q))


def trimmed_mean(samples: Sequence[float] | np.ndarray, proportion: float = TRIM_PROPORTION) -> float:
    """Mean after dropping ``floor(n * proportion)`` samples from each end of the sorted list.

    >>> trimmed_mean([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000])
    5.5
    """
    if not 0.0 <= proportion < 0.5:
        raise ValueError(f"trim proportion must lie in [0, 0.5), got {proportion}")
    arr = np.sort(_as_array(samples))
    k = math.floor(arr.size * proportion)
    return float(arr[k : arr.size - k].mean())


def summarize(samples: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """p10/p50/p90, 10 % trimmed mean, mean, sample std (ddof=1; 0 for one sample), min, max, n."""
    arr = _as_array(samples)
    p10, p50, p90 = (float(v) for v in np.percentile(arr, [10, 50, 90]))
    return {
        "n": int(arr.size),
        "p10": p10,
        "p50": p50,
        "p90": p90,
        "trimmed_mean": trimmed_mean(arr),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def repetition_spread(repetitions: Sequence[Sequence[float]]) -> dict[str, Any]:
    """How much the median moved between repetitions.

    Returns each repetition's p50, their min/max, the absolute spread (max - min) and the
    relative spread (max - min) / median of the p50s. A large relative spread (say > 5 %)
    means the device was not in a steady state (thermal throttling, background load).
    """
    reps = [r for r in repetitions if len(r)]
    if not reps:
        raise MobilecError("no repetition has latency samples", hint="run at least one repetition with runs >= 1")
    p50s = [percentile(r, 50) for r in reps]
    lo, hi = min(p50s), max(p50s)
    mid = float(np.median(p50s))
    return {
        "p50_per_repetition": p50s,
        "p50_min": lo,
        "p50_max": hi,
        "spread_ms": hi - lo,
        "spread_rel": (hi - lo) / mid if mid > 0 else 0.0,
    }
