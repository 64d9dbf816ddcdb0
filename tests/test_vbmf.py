"""Empirical VBMF: rank recovery on synthetic low-rank + Gaussian noise matrices."""

from __future__ import annotations

import numpy as np
import pytest

from mobilec.passes.tucker import weaken
from mobilec.passes.vbmf import evbmf, vbmf_rank


def _low_rank(length: int, width: int, rank: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(length, rank)) @ rng.normal(size=(rank, width)) + noise * rng.normal(size=(length, width))


@pytest.mark.parametrize(
    ("length", "width", "rank", "noise"),
    [(30, 60, 4, 0.1), (64, 576, 10, 0.05), (40, 40, 3, 0.3), (100, 30, 7, 0.1), (128, 1152, 20, 0.2)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_true_rank_and_noise_variance(length: int, width: int, rank: int, noise: float, seed: int) -> None:
    res = evbmf(_low_rank(length, width, rank, noise, seed))
    assert res.rank == rank
    assert res.sigma2 == pytest.approx(noise**2, rel=0.15)
    assert res.shape == (min(length, width), max(length, width))
    # retained singular values are shrunk toward zero, never inflated
    assert np.all(res.shrunk <= res.singular_values[:rank]) and np.all(res.shrunk > 0)
    assert res.singular_values[rank - 1] > res.threshold > res.singular_values[rank]


@pytest.mark.parametrize("seed", range(3))
def test_pure_noise_has_rank_zero(seed: int) -> None:
    y = np.random.default_rng(seed).normal(size=(50, 200))
    assert vbmf_rank(y) == 0


def test_known_noise_variance_and_degenerate_inputs() -> None:
    y = _low_rank(40, 80, 5, 0.1, seed=3)
    assert evbmf(y, sigma2=0.01).rank == 5
    assert evbmf(y, sigma2=100.0).rank == 0  # noise this large explains everything
    assert evbmf(np.zeros((5, 7))).rank == 0
    with pytest.raises(ValueError, match="NaN"):
        evbmf(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        evbmf(np.ones(4))


def test_weakening_moves_toward_full_rank() -> None:
    assert weaken(4, 32, 0.0, 1) == 4
    assert weaken(4, 32, 1.0, 1) == 32
    assert weaken(4, 32, 0.5, 1) == 18
    assert weaken(0, 32, 0.0, 3) == 3  # min_rank lifts a zero VBMF rank
    assert weaken(2, 2, 0.0, 8) == 2  # but never above full rank
