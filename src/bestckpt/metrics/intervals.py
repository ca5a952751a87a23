"""Confidence intervals of the metrics from the samples already drawn: one seeded bootstrap, shared by every metric.

A resample is a row of multinomial counts ``W[b, i]`` (how often sample i — one (prompt, seed) pair — is drawn;
each row sums to N), made once per evaluation by :func:`resample_counts` and used by every metric, so the
composite's own replicates come from the same resamples and its interval is the composite's, not a combination of
its parts' intervals. Each metric gives B replicate values; the interval is their percentile interval
(:func:`percentile_interval`, 95% by default), re-centred on the score (the replicates' mean shifted onto it).

How each metric is resampled, and why (cost matters: B = 1000 resamples must stay small next to sampling):

- Per-sample means (CLIP score, LPIPS): exact, ``W @ v / W @ 1`` (samples without a value are left out).
- Inception Score: exact. The counts are permuted and split exactly like the rows of the metric, and each split's
  class marginal and entropy term are count-weighted means: three matrix products, no loop over resamples. (At
  tiny N a resample can miss every sample of a split; that split is left out of that resample's mean.)
- FID: linearised (influence-function) bootstrap. A naive bootstrap recomputes Σ and a D×D eigenvalue problem per
  resample (1000 × ≈1 s at D = 2048). FID is a smooth function of the sample mean and covariance, so to first
  order a resample's FID is ``FID + W[b] @ ψ / N`` with ψ the empirical influence of each sample::

      ψᵢ = 2 (μ − μ_r)·(xᵢ − μ) + (‖xᵢ − μ‖² − mean) − ((xᵢ − μ)ᵀ G (xᵢ − μ) − mean),   G = F M^(-1/2) Fᵀ

  (F Fᵀ = Σ_r, M = Fᵀ Σ F): d tr√M = ½ tr(M^(-1/2) dM). One ``eigh`` of M (or of the N×N Gram matrix when
  N < D) replaces 1000. Its spread is validated against the naive bootstrap in the tests. Limitation: at
  FID ≈ 0 (generated ≈ reference) the first-order term vanishes and the interval is too narrow; rankings
  happen far from there.
- KID: linearised too (Hájek projection of the unbiased MMD² U-statistic over the whole sets):
  ψᵢ = 2 (aᵢ − ā) − 2 (cᵢ − c̄), aᵢ = mean_{j≠i} k(xᵢ, xⱼ), cᵢ = mean_j k(xᵢ, y_j). Kernel rows are computed in
  blocks (no N×N matrix is kept).

The reference set is held fixed (it is the same for every checkpoint, so its noise does not change a ranking):
these intervals say how much a score would move with another draw of the generated samples at the same N. They
cover E[score at this N], not the large-N limit (FID's small-N bias is part of the score, not of its noise).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._util import as_float64_2d
from .fid import ReferenceStatistics, _clip_roundoff

__all__ = [
    "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "resample_counts", "percentile_interval", "mean_replicates",
    "fid_influence", "fid_replicates", "kid_influence", "kid_replicates", "inception_score_replicates",
    "composite_replicates",
]

#: Bootstrap resamples per evaluation (percentiles of 1000 replicates: the 95% bounds move by ~1% of the width).
DEFAULT_RESAMPLES = 1000
#: Two-sided coverage of the intervals.
DEFAULT_LEVEL = 0.95
_KID_BLOCK = 1024


def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Multinomial counts [resamples, n] (float64, rows sum to n): the bootstrap resamples of n samples, seeded."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {n}")
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def percentile_interval(replicates: Any, level: float = DEFAULT_LEVEL,
                        center: float | None = None) -> tuple[float, float] | None:
    """(lo, hi) percentile interval of the replicates; None when a replicate is not finite (no made-up bound).

    ``center`` (the score itself): the replicates are first shifted so that their mean is the score. A resample
    repeats samples, which biases some statistics (IS: a split's class marginal looks less diverse, so IS* runs
    low); that bias belongs to the resampling, not to the score, and without the shift it moves the interval off
    the score (at small N, IS fell outside its own interval). The spread and skew are kept.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(replicates, dtype=np.float64)
    if r.size < 2 or not np.all(np.isfinite(r)):
        return None
    if center is not None:
        r = r + (float(center) - float(r.mean()))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mean_replicates(values: Any, counts: np.ndarray) -> np.ndarray:
    """Replicates [B] of the mean of per-sample values [N]; non-finite values (no pair) are left out."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.shape[0] != counts.shape[1]:
        raise ValueError(f"{v.shape[0]} values for resamples of {counts.shape[1]} samples")
    ok = np.isfinite(v)
    den = counts @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((counts @ np.where(ok, v, 0.0)) / den)  # a resample without any value: NaN


def fid_influence(features: Any, reference: ReferenceStatistics) -> tuple[float, np.ndarray]:
    """(FID, ψ [N]): the FID of features [N, D] against ``reference`` and each sample's empirical influence.

    ψ has mean 0; ``FID + mean(ψ over a resample)`` is the resample's FID to first order (module docstring).
    """
    x = as_float64_2d(features, "features")
    n, d = x.shape
    if d != reference.dim:
        raise ValueError(f"features have dimension {d} but the reference has {reference.dim}")
    if n < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n}")
    mu = x.mean(axis=0)
    xc = x - mu
    f = reference.factor
    y = xc @ f  # [N, D]: centred samples in the reference's whitened frame
    if n > d:
        m = (y.T @ y) / (n - 1.0)
        lam, vec = np.linalg.eigh(0.5 * (m + m.T))
        lam = _clip_roundoff(lam, "FID product covariance")
        z2 = (y @ vec) ** 2  # [N, D]
        quad = _weighted_by_inverse_sqrt(z2, lam)
    else:  # M's non-zero spectrum from the N×N Gram matrix: y vₖ = √(n-1)·√λₖ·uₖ
        a = y / math.sqrt(n - 1.0)
        gram = a @ a.T
        lam, u = np.linalg.eigh(0.5 * (gram + gram.T))
        lam = _clip_roundoff(lam, "FID product covariance")
        quad = _weighted_by_inverse_sqrt((n - 1.0) * (u ** 2) * lam, lam)
    tr_covmean = float(np.sqrt(lam).sum())
    diff = mu - reference.mu
    sq = (xc * xc).sum(axis=1)
    fid = float(diff @ diff + sq.sum() / (n - 1.0) + np.trace(reference.sigma) - 2.0 * tr_covmean)
    psi = 2.0 * (xc @ diff) + (sq - sq.mean()) - (quad - quad.mean())
    return fid, psi


def _weighted_by_inverse_sqrt(z2: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Σₖ z2[:, k] / √λₖ over the eigenvalues that are not zero (a pseudo-inverse: zero directions add nothing)."""
    keep = lam > 1e-12 * max(float(lam.max()), 1e-300)
    return np.asarray(z2[:, keep] @ (1.0 / np.sqrt(lam[keep])))


def fid_replicates(features: Any, reference: ReferenceStatistics, counts: np.ndarray) -> np.ndarray:
    """Linearised bootstrap replicates [B] of the FID of features [N, D] against ``reference``."""
    fid, psi = fid_influence(features, reference)
    return fid + (counts @ psi) / counts.shape[1]


def kid_influence(features: Any, reference_features: Any) -> np.ndarray:
    """ψ [N] of the whole-set unbiased MMD² (cubic kernel) to each generated sample (reference held fixed)."""
    x = as_float64_2d(features, "features")
    y = as_float64_2d(reference_features, "reference features")
    n, d = x.shape
    if y.shape[1] != d:
        raise ValueError(f"feature dimensions differ: {d} vs reference {y.shape[1]}")
    if n < 2:
        raise ValueError(f"KID needs at least 2 samples, got {n}")
    a = np.empty(n)
    c = np.empty(n)
    for lo in range(0, n, _KID_BLOCK):
        xb = x[lo:lo + _KID_BLOCK]
        kxx = (xb @ x.T / d + 1.0) ** 3
        diag = ((xb * xb).sum(axis=1) / d + 1.0) ** 3
        a[lo:lo + len(xb)] = (kxx.sum(axis=1) - diag) / (n - 1.0)
        c[lo:lo + len(xb)] = ((xb @ y.T / d + 1.0) ** 3).mean(axis=1)
    return np.asarray(2.0 * (a - a.mean()) - 2.0 * (c - c.mean()))


def kid_replicates(value: float, features: Any, reference_features: Any, counts: np.ndarray) -> np.ndarray:
    """Linearised bootstrap replicates [B] of a KID ``value`` computed from these features."""
    psi = kid_influence(features, reference_features)
    return float(value) + (counts @ psi) / counts.shape[1]


def inception_score_replicates(logits: Any, counts: np.ndarray, splits: int = 10, seed: int = 2020,
                               shuffle: bool = True) -> np.ndarray:
    """Exact bootstrap replicates [B] of :func:`~bestckpt.metrics.inception_score_from_logits` (same splits)."""
    z = as_float64_2d(logits, "logits")
    n = z.shape[0]
    if counts.shape[1] != n:
        raise ValueError(f"{n} logits for resamples of {counts.shape[1]} samples")
    if splits < 1 or splits > n:
        raise ValueError(f"splits must be between 1 and {n}, got {splits}")
    w = counts
    if shuffle:
        perm = np.random.RandomState(seed).permutation(n)
        z, w = z[perm], counts[:, perm]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    neg_entropy = np.where(p > 0, p * log_p, 0.0).sum(axis=1)  # Σ_c p log p per sample
    total = np.zeros(w.shape[0])
    used = np.zeros(w.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(splits):
            lo, hi = i * n // splits, (i + 1) * n // splits
            ws = w[:, lo:hi]
            tot = ws.sum(axis=1)
            q = (ws @ p[lo:hi]) / tot[:, None]  # [B, C] count-weighted class marginal
            q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0).sum(axis=1)
            split_is = np.exp((ws @ neg_entropy[lo:hi]) / tot - q_log_q)
            drawn = tot > 0  # a split no sample of this resample falls in is left out of its mean (tiny N only)
            total += np.where(drawn, split_is, 0.0)
            used += drawn
        return np.asarray(total / used)  # NaN only if a resample drew no sample at all (impossible: rows sum to N)


def composite_replicates(replicates: Mapping[str, np.ndarray], weights: Mapping[str, float],
                         mappings: Mapping[str, Callable[[float], float]]) -> np.ndarray | None:
    """Replicates [B] of the composite, from the components' replicates of the same resamples; None when a
    weighted component has none (no partial composite) or a mapping rejects a replicate value."""
    if any(k not in replicates for k in weights):
        return None
    b = len(next(iter(replicates[k] for k in weights)))
    acc = np.zeros(b)
    total = 0.0
    try:
        for name, w in weights.items():
            acc += w * np.array([mappings[name](float(v)) for v in replicates[name]])
            total += w
    except (ValueError, KeyError):
        return None
    return acc / total
