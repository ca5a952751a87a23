"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over seeded random subsets.

k(x, y) = (xᵀy / d + 1)³. For each of ``subsets`` draws, ``subset_size`` rows of each set are chosen without
replacement and the unbiased MMD² estimate is computed; the result is the mean and the (ddof=0) std over draws.
Subsets are drawn exactly as torch-fidelity does (``np.random.RandomState(seed)``; per draw first the indices of the
first set, then of the second), so the same seed gives the same subsets and the same number.

KID is unbiased at small N, which makes it the right ranking metric for in-loop evaluation of a few hundred images.
When a set is smaller than ``subset_size`` the subset size is reduced to the smaller set size with a warning (the
estimate stays unbiased, its variance grows) rather than refusing.

Small runs: when both sets are no larger than the subset size, every subset is the whole of both sets, all draws
are the same and their std would be exactly 0.00 — not "no uncertainty" but "not measured". The std is then None
(a log line says why); the bootstrap interval of :mod:`bestckpt.metrics.intervals` measures the spread instead.

Speed: when the sets are small enough the three kernel matrices are computed once for all rows and each subset
reads its sub-blocks, instead of recomputing three m×m×d products per subset.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._util import as_float64_2d

__all__ = ["kid_from_features", "polynomial_kernel", "mmd2_unbiased"]

logger = logging.getLogger(__name__)

# Above this many kernel entries (all three matrices), kernels are computed per subset instead of once.
_FULL_KERNEL_MAX_ENTRIES = 60_000_000


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """(x yᵀ / d + coef0) ** degree for x [N, D], y [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD² from kernel matrices [m, m] (diagonals of K_XX and K_YY excluded; K_XY fully used)."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    features: Any,
    reference_features: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> tuple[float, float | None]:
    """KID (mean, std) between features [N, D] and reference features [M, D].

    The std is None when every subset is the whole of both sets (module docstring: a 0.00 would be misleading).

    ``seed`` picks the subsets (default 2020, torch-fidelity's default). Raises ValueError when either set has
    fewer than 2 samples or the dimensions differ.
    """
    x = as_float64_2d(features, "features")
    y = as_float64_2d(reference_features, "reference features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs reference {y.shape[1]}; use the same backbone")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    n, m_ref = x.shape[0], y.shape[0]
    if min(n, m_ref) < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n} and {m_ref}; generate more images")
    m = int(subset_size)
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    if m > min(n, m_ref):
        logger.warning(
            "KID subset_size=%d is larger than the sets (N=%d, reference=%d); using subset_size=%d. The estimate is "
            "still unbiased but noisier; report its std and use more samples for finer comparisons.",
            m, n, m_ref, min(n, m_ref),
        )
        m = min(n, m_ref)

    whole = m >= n and m >= m_ref
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n, m, replace=False), rng.choice(m_ref, m, replace=False)) for _ in range(subsets)]
    full = n * n + m_ref * m_ref + n * m_ref <= _FULL_KERNEL_MAX_ENTRIES
    if full:
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    mmds = np.empty(subsets, dtype=np.float64)
    for i, (ix, iy) in enumerate(draws):
        if full:
            mmds[i] = mmd2_unbiased(k_xx[np.ix_(ix, ix)], k_xy[np.ix_(ix, iy)], k_yy[np.ix_(iy, iy)])
        else:
            xs, ys = x[ix], y[iy]
            mmds[i] = mmd2_unbiased(polynomial_kernel(xs, xs), polynomial_kernel(xs, ys), polynomial_kernel(ys, ys))
    if whole:
        logger.info("KID from N=%d and reference=%d with subset_size=%d: every subset is the whole of both sets, so "
                    "the spread over subsets is not measured (reported as None, not 0.00); use the bootstrap interval",
                    n, m_ref, m)
        return float(mmds.mean()), None
    return float(mmds.mean()), float(mmds.std())
