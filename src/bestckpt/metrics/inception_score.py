"""Inception Score from the 1008-class ``logits_unbiased`` of the FID Inception network, as torch-fidelity defines it.

IS = exp(E_x KL(p(c|x) ‖ p̄(c))) per split, with p = softmax(logits) in float64 and p̄ the split's mean; the result is
the mean and the ddof=0 std over ``splits`` splits. With ``shuffle`` the rows are first permuted by
``np.random.RandomState(seed).permutation(N)`` and split ``i`` is rows ``[i*N//splits, (i+1)*N//splits)`` —
exactly torch-fidelity's order, so the same seed reproduces its number (torchmetrics differs: ddof=1 std).

IS needs hundreds of images per split to mean anything; with fewer a warning says so.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._util import as_float64_2d

__all__ = ["inception_score_from_logits", "MIN_SAMPLES_PER_SPLIT"]

logger = logging.getLogger(__name__)

#: Below this many images per split, a warning says the score is mostly noise.
MIN_SAMPLES_PER_SPLIT = 100


def inception_score_from_logits(
    logits: Any, splits: int = 10, seed: int = 2020, shuffle: bool = True
) -> tuple[float, float]:
    """(mean, std) Inception Score of logits [N, C]; default seed 2020 as torch-fidelity."""
    z = as_float64_2d(logits, "logits")
    n = z.shape[0]
    if splits < 1 or splits > n:
        raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}; "
                         f"use fewer splits or more images")
    if n // splits < MIN_SAMPLES_PER_SPLIT:
        logger.warning(
            "Inception Score from N=%d images in %d splits (%d per split): each split's class marginal is estimated "
            "from too few images, so the score is biased low and mostly noise; compare it only across evaluations "
            "with the same N. Use >= %d images per split (or fewer splits), and KID for ranking at small N.",
            n, splits, n // splits, MIN_SAMPLES_PER_SPLIT,
        )
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_c, log_p_c = p[lo:hi], log_p[lo:hi]
        log_q = np.log(p_c.mean(axis=0, keepdims=True))
        # p == 0 contributes 0 (limit of p log p), even where log q underflowed to -inf.
        terms = np.where(p_c > 0, p_c * (log_p_c - log_q), 0.0)
        kl = terms.sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))
