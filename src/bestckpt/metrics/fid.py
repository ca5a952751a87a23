"""Fréchet Inception Distance from features or statistics, float64, through symmetric eigenvalues.

FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 · tr √(Σ₁ Σ₂), with Σ = ``np.cov(X, rowvar=False)`` (ddof=1).

Why not ``scipy.linalg.sqrtm``: it is slow (≈10 s at d=2048 on 2 cores), returned huge spurious imaginary parts in
some scipy versions and its API changed (scipy 1.18 removed ``disp``). The trace only needs the eigenvalues of
Σ_gen Σ_ref. For any factor F of the reference covariance (F Fᵀ = Σ_ref) they equal the eigenvalues of the
*symmetric* positive semi-definite matrix Fᵀ Σ_gen F, so ``eigvalsh`` (no eigenvectors) applies — ``eigvalsh`` on the
non-symmetric Σ₁Σ₂ itself would be wrong. F is the Cholesky factor when Σ_ref is positive definite (cheap), else
V·√Λ from ``eigh`` (rank-deficient references). F is computed once per reference set (``ReferenceStatistics.factor``)
so repeated FID against one reference costs two matrix products and one symmetric eigenvalue problem — or, when
the generated set has fewer samples N than dimensions D, only an N×N eigenvalue problem on the centred features
(the non-zero spectrum of AᵀA equals that of AAᵀ, A = X_c F / √(N−1)).

Eigenvalues that come out slightly negative are round-off of a PSD matrix and are clipped to zero; if their
magnitude is large (what sqrtm would report as a large imaginary part) a :class:`NumericalError` is raised instead
of silently dropping it.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bestckpt.errors import NumericalError

from ._util import as_float64, as_float64_2d

__all__ = ["ReferenceStatistics", "fid_from_features", "fid_from_statistics", "warn_if_small_sample"]

logger = logging.getLogger(__name__)

# Relative size (to the largest eigenvalue) below which a negative eigenvalue is treated as round-off.
_ROUNDOFF_REL = 1e-9
# Relative size of the "imaginary part" (Σ sqrt(-λ) over negative λ, vs. the trace term) that makes FID untrustworthy.
_IMAG_REL = 1e-3


def warn_if_small_sample(n: int, d: int, what: str = "FID") -> None:
    """Log a warning saying what an FID from ``n`` samples of ``d``-dimensional features is worth."""
    if n < d + 1:
        logger.warning(
            "%s computed from N=%d samples of %d-dimensional features: the covariance is rank-deficient (a full-rank "
            "estimate needs N >= %d) and FID is strongly biased upward at this N, so the number is only comparable "
            "between evaluations that use the same N, protocol and reference set. Prefer KID (unbiased at small N) "
            "for ranking, or evaluate >= %d samples.",
            what, n, d, d + 1, d + 1,
        )


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F [D, D] with F Fᵀ = sigma: Cholesky if positive definite, else V·√Λ via ``eigh`` (negatives clipped)."""
    sym = 0.5 * (sigma + sigma.T)
    try:
        return np.linalg.cholesky(sym)
    except np.linalg.LinAlgError:  # singular (N <= D) or indefinite by round-off
        lam, vec = np.linalg.eigh(sym)
        lam = _clip_roundoff(lam, "reference covariance")
        return vec * np.sqrt(lam)


def _clip_roundoff(lam: np.ndarray, what: str) -> np.ndarray:
    """Clip round-off negative eigenvalues to 0; raise NumericalError when the negative part is too large."""
    lam_max = float(lam.max()) if lam.size else 0.0
    neg = lam[lam < -_ROUNDOFF_REL * max(lam_max, 0.0)]
    if neg.size:
        imag = float(np.sqrt(-neg).sum())
        total = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
        if imag > _IMAG_REL * max(total, 1e-12):
            raise NumericalError(
                f"{what}: eigenvalues down to {float(neg.min()):.3e} (largest {lam_max:.3e}); the square root would "
                f"have an imaginary part of {imag:.3e} vs a real part of {total:.3e}. The covariance is not positive "
                f"semi-definite: check the features for NaN/duplicated rows or pass float64 statistics."
            )
        logger.debug("%s: clipped %d small negative eigenvalues (min %.3e)", what, neg.size, float(neg.min()))
    return np.clip(lam, 0.0, None)


def _sum_sqrt_eig_sym(m: np.ndarray, what: str) -> float:
    """Σᵢ √λᵢ of the symmetric PSD matrix ``m`` (symmetrised first to remove round-off asymmetry)."""
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(_clip_roundoff(lam, what)).sum())


class ReferenceStatistics:
    """Mean [D] and covariance [D, D] (float64) of a reference feature set, with a factor F (F Fᵀ = Σ) cached.

    Build with :meth:`from_features`; persist with :meth:`to_arrays` / :meth:`from_arrays` (the caller owns the disk).
    """

    def __init__(self, mu: Any, sigma: Any, num_samples: int, factor: Any | None = None) -> None:
        self.mu = as_float64(mu, "mu")
        self.sigma = as_float64(sigma, "sigma")
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0],) * 2:
            raise ValueError(
                f"mu must be [D] and sigma [D, D]; got mu {self.mu.shape} and sigma {self.sigma.shape}"
            )
        self.num_samples = int(num_samples)
        self._factor = None if factor is None else as_float64(factor, "factor")

    @classmethod
    def from_features(cls, features: Any) -> ReferenceStatistics:
        """Statistics of features [N, D] (torch or numpy), with N >= 2."""
        x = as_float64_2d(features, "reference features")
        if x.shape[0] < 2:
            raise ValueError(f"FID statistics need at least 2 samples, got {x.shape[0]}; add reference images")
        warn_if_small_sample(x.shape[0], x.shape[1], "FID reference statistics")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def factor(self) -> np.ndarray:
        """F [D, D] with F Fᵀ = Σ, computed once and kept: the per-reference factorisation that makes repeated FID
        cheap (Cholesky, or V·√Λ for a rank-deficient Σ)."""
        if self._factor is None:
            self._factor = _psd_factor(self.sigma)
        return self._factor

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (includes the factor so a cached reference needs no new factorisation)."""
        return {"mu": self.mu, "sigma": self.sigma, "factor": self.factor,
                "num_samples": np.asarray(self.num_samples)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> ReferenceStatistics:
        factor = arrays["factor"] if "factor" in arrays else None
        return cls(arrays["mu"], arrays["sigma"], int(arrays["num_samples"]), factor)

    def fid_to_statistics(self, mu: Any, sigma: Any) -> float:
        """FID between other statistics (mu [D], sigma [D, D]) and this reference."""
        mu = as_float64(mu, "mu")
        sigma = as_float64(sigma, "sigma")
        if mu.shape != self.mu.shape or sigma.shape != self.sigma.shape:
            raise ValueError(f"statistics of dimension {mu.shape} do not match the reference's {self.mu.shape}; "
                             f"use the same backbone and layer for both sides")
        f = self.factor
        tr_covmean = _sum_sqrt_eig_sym(f.T @ sigma @ f, "FID product covariance")
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + np.trace(self.sigma) - 2.0 * tr_covmean)

    def fid_to_features(self, features: Any) -> float:
        """FID between features [N, D] and this reference; uses an N×N eigenproblem when N < D."""
        x = as_float64_2d(features, "features")
        n, d = x.shape
        if d != self.dim:
            raise ValueError(f"features have dimension {d} but the reference has {self.dim}; use the same backbone "
                             f"and layer for both sides")
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {n}; generate more images")
        warn_if_small_sample(n, d)
        mu = x.mean(axis=0)
        if n >= d:
            return self.fid_to_statistics(mu, np.cov(x, rowvar=False))
        # Σ_gen = XcᵀXc/(n-1): eigenvalues of Fᵀ Σ_gen F = AᵀA with A = Xc F / √(n-1) [N, D];
        # its non-zero spectrum equals that of AAᵀ [N, N].
        xc = x - mu
        a = (xc @ self.factor) / np.sqrt(n - 1.0)
        tr_covmean = _sum_sqrt_eig_sym(a @ a.T, "FID product covariance")
        diff = mu - self.mu
        tr_sigma = float((xc * xc).sum() / (n - 1.0))
        return float(diff @ diff + tr_sigma + np.trace(self.sigma) - 2.0 * tr_covmean)


def fid_from_statistics(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """FID between (mu1 [D], sigma1 [D, D]) and (mu2, sigma2). The second covariance is the one factorised."""
    return ReferenceStatistics(mu2, sigma2, num_samples=0).fid_to_statistics(mu1, sigma1)


def fid_from_features(features: Any, reference_features: Any) -> float:
    """FID between two feature sets [N, D] and [M, D] (torch or numpy; computed in float64)."""
    return ReferenceStatistics.from_features(reference_features).fid_to_features(features)
