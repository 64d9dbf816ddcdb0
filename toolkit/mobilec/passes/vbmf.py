"""Empirical variational Bayesian matrix factorization (EVBMF): rank selection for Tucker.

Global analytic solution of fully observed VBMF with the noise variance estimated from
the data (Nakajima, Sugiyama, Babacan & Tomioka, "Global analytic solution of
fully-observed variational Bayesian matrix factorization", JMLR 14, 2013), written from
the math in numpy.

Model: ``Y = B A^T + E`` for an ``L x M`` matrix (``L <= M``; wider inputs are transposed),
``E`` i.i.d. Gaussian with variance ``sigma2``. With ``alpha = L / M``:

- a singular component ``gamma_h`` survives iff ``gamma_h > gamma_evb`` where
  ``gamma_evb = sqrt(M * sigma2 * (1 + tau) * (1 + alpha / tau))`` and
  ``tau = 2.5129 * sqrt(alpha)`` (the paper's approximation of the zero of
  ``Psi(t) = log(t + 1) + alpha * log(t / alpha + 1) - t``);
- ``sigma2`` (when not given) minimizes the EVB free energy, a scalar function of
  ``sigma2`` minimized by bounded Brent search between a lower bound derived from the
  smallest singular values that must be noise and the upper bound ``||Y||_F^2 / (L M)``;
- the rank is the number of surviving components.

>>> rng = np.random.default_rng(0)
>>> y = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 60)) + 0.1 * rng.normal(size=(30, 60))
>>> evbmf(y).rank
4
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

#: tau-bar ~= TAU_COEF * sqrt(alpha): the EVB truncation constant (Nakajima et al. 2013).
TAU_COEF = 2.5129


@contextlib.contextmanager
def single_threaded_linalg() -> Iterator[None]:
    """Run small SVDs on one thread: multi-threaded BLAS on a busy 2-core host is ~100x slower for them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits  # ships with scikit-learn
        except ImportError:  # pragma: no cover - scikit-learn is a dependency
            yield
            return
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class VBMFResult:
    """Outcome of :func:`evbmf` on one matrix.

    ``singular_values`` are all singular values of the input (descending); ``shrunk`` holds
    the EVB posterior-mean estimates of the ``rank`` retained ones.
    """

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray
    shrunk: np.ndarray
    shape: tuple[int, int]


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Positive root of ``t^2 - (x - (1 + alpha)) t + alpha = 0``: the EVB 'signal-to-noise' of a component."""
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _free_energy(sigma2: float, s2: np.ndarray, residual: float, length: int, width: int, xbar: float) -> float:
    """EVB free energy (up to constants, scaled by 2/M) as a function of the noise variance.

    ``s2`` are the squared singular values kept in the SVD (``H`` of them), ``residual``
    the energy of ``Y`` outside them. Components with ``x_h = s2_h / (M sigma2) <= xbar``
    are pruned and cost ``x - log x``; retained ones cost ``x - tau + log((tau + 1) / x)
    + alpha log(tau / alpha + 1)``. Each of the ``L`` rows contributes ``log sigma2``.
    """
    alpha = length / width
    x = s2 / (width * sigma2)
    keep = x > xbar
    z_keep, z_drop = x[keep], x[~keep]
    t = _tau(z_keep, alpha)
    energy = np.sum(z_drop - np.log(z_drop))
    energy += np.sum(z_keep - t) + np.sum(np.log((t + 1.0) / z_keep)) + alpha * np.sum(np.log(t / alpha + 1.0))
    energy += residual / (width * sigma2) + (length - len(s2)) * np.log(sigma2)
    return float(energy)


def evbmf(y: np.ndarray, sigma2: float | None = None) -> VBMFResult:
    """Empirical VBMF of matrix ``y``: the rank, noise variance and shrunk singular values.

    ``sigma2`` fixes the noise variance instead of estimating it.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 1:
        raise ValueError(f"evbmf needs a non-empty 2-D matrix, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("evbmf: the matrix has NaN or infinite entries")
    if y.shape[0] > y.shape[1]:
        y = y.T
    length, width = y.shape  # L <= M
    alpha = length / width
    tau_bar = TAU_COEF * np.sqrt(alpha)
    xbar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    with single_threaded_linalg():
        s = np.linalg.svd(y, compute_uv=False)
    total = float(np.sum(y * y))
    if total == 0.0:
        return VBMFResult(0, 0.0, 0.0, s, np.zeros(0), (length, width))
    s2 = s * s
    residual = max(total - float(np.sum(s2)), 0.0)  # zero here: the SVD keeps all L components

    if sigma2 is None:
        # Components beyond index e_h cannot all be signal: EVB retains at most
        # ceil(L / (1 + alpha)) - 1 of them, which bounds sigma2 from below.
        e_h = min(int(np.ceil(length / (1.0 + alpha))) - 1, length)
        tail = s2[e_h:] if e_h < length else s2[-1:]
        lower = max(float(tail[0]) / (width * xbar), float(np.mean(tail)) / width)
        upper = total / (length * width)
        if not lower < upper:  # degenerate spectra (e.g. all singular values equal)
            lower = upper * 1e-12
        # Pruned components need x > 0 for the log: restrict to sigma2 where all s2 > 0 terms are finite.
        s2_pos = s2[s2 > 0]
        res = minimize_scalar(
            _free_energy,
            args=(s2_pos, residual + float(np.sum(s2[s2 <= 0])), length, width, xbar),
            bounds=(lower, upper),
            method="bounded",
        )
        sigma2 = float(res.x)
    elif sigma2 <= 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")

    threshold = float(np.sqrt(width * sigma2 * xbar))
    rank = int(np.sum(s > threshold))
    kept = s[:rank]
    # Posterior mean of the retained singular values (Nakajima et al. 2013, eq. 15).
    q = 1.0 - (length + width) * sigma2 / kept**2
    shrunk = 0.5 * kept * (q + np.sqrt(np.maximum(q * q - 4.0 * length * width * sigma2**2 / kept**4, 0.0)))
    return VBMFResult(rank, float(sigma2), threshold, s, shrunk, (length, width))


def vbmf_rank(y: np.ndarray) -> int:
    """Number of components EVBMF keeps for ``y`` (0 for a pure-noise matrix)."""
    return evbmf(y).rank
