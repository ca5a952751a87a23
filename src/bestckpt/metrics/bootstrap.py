"""Intervals of an evaluation's metrics from its per-sample features: the glue between the feature names of the
registry and the pure resampling functions of :mod:`bestckpt.metrics.intervals`.

:func:`metric_intervals` draws one set of seeded resamples of the N samples (prompt × seed pairs) and returns
``{metric: (lo, hi)}`` for every metric it knows how to resample (the built-in ones) and for the composite, from
the composite's own replicates. A metric without a value, a custom metric, or a replicate that is not finite gets
no interval (absent, never a made-up one).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .clip_score import clip_cosines
from .intervals import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    composite_replicates,
    fid_replicates,
    inception_score_replicates,
    kid_replicates,
    mean_replicates,
    percentile_interval,
    resample_counts,
)
from .registry import (
    FEATURE_CLIP_IMAGE,
    FEATURE_CLIP_TEXT,
    FEATURE_INCEPTION_LOGITS,
    FEATURE_INCEPTION_POOL,
    FEATURE_LPIPS,
    REFERENCE_FID_STATISTICS,
    REFERENCE_INCEPTION_POOL,
)

__all__ = ["metric_intervals", "metric_replicates", "RESAMPLED_METRICS"]

logger = logging.getLogger(__name__)

Replicator = Callable[[Mapping[str, Any], Any, np.ndarray, Mapping[str, Any], int, Mapping[str, Any]], np.ndarray]


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().double().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float64)


def _clip(f: Mapping[str, Any], ref: Any, w: np.ndarray, scores: Mapping[str, Any], seed: int,
          opts: Mapping[str, Any]) -> np.ndarray:
    cos = clip_cosines(_np(f[FEATURE_CLIP_IMAGE]), _np(f[FEATURE_CLIP_TEXT]))
    convention = opts.get("convention", "cosine")
    if convention == "hessel":
        return mean_replicates(2.5 * np.clip(cos, 0.0, None), w)
    if convention == "torchmetrics":
        return np.maximum(100.0 * mean_replicates(cos, w), 0.0)
    return mean_replicates(cos, w)


def _lpips(f: Mapping[str, Any], ref: Any, w: np.ndarray, scores: Mapping[str, Any], seed: int,
           opts: Mapping[str, Any]) -> np.ndarray:
    return mean_replicates(_np(f[FEATURE_LPIPS]), w)


def _is(f: Mapping[str, Any], ref: Any, w: np.ndarray, scores: Mapping[str, Any], seed: int,
        opts: Mapping[str, Any]) -> np.ndarray:
    return inception_score_replicates(_np(f[FEATURE_INCEPTION_LOGITS]), w, splits=int(opts.get("splits", 10)),
                                      seed=seed)


def _fid(f: Mapping[str, Any], ref: Any, w: np.ndarray, scores: Mapping[str, Any], seed: int,
         opts: Mapping[str, Any]) -> np.ndarray:
    return fid_replicates(_np(f[FEATURE_INCEPTION_POOL]), ref[REFERENCE_FID_STATISTICS], w)


def _kid(f: Mapping[str, Any], ref: Any, w: np.ndarray, scores: Mapping[str, Any], seed: int,
         opts: Mapping[str, Any]) -> np.ndarray:
    return kid_replicates(float(scores["kid"]), _np(f[FEATURE_INCEPTION_POOL]), _np(ref[REFERENCE_INCEPTION_POOL]), w)


#: How each built-in metric is resampled (see :mod:`bestckpt.metrics.intervals`).
RESAMPLED_METRICS: dict[str, Replicator] = {
    "clip_score": _clip, "lpips": _lpips, "inception_score": _is, "fid": _fid, "kid": _kid,
}


def _sample_count(features: Mapping[str, Any]) -> int:
    sizes = {int(v.shape[0]) for v in features.values() if hasattr(v, "shape")}
    if len(sizes) != 1:
        raise ValueError(f"features of one evaluation must all have N rows, got sizes {sorted(sizes)}")
    return sizes.pop()


def metric_replicates(
    scores: Mapping[str, float | None],
    features: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    counts: np.ndarray,
    seed: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Replicates [B] of every scored built-in metric over the resamples ``counts`` [B, N]."""
    out: dict[str, np.ndarray] = {}
    for name, fn in RESAMPLED_METRICS.items():
        if scores.get(name) is None:
            continue
        try:
            out[name] = fn(features, reference, counts, scores, seed, (options or {}).get(name, {}))
        except Exception as exc:  # an interval is extra information: its failure never costs the score
            logger.warning("no interval for %s: %s: %s", name, type(exc).__name__, exc)
    return out


def metric_intervals(
    scores: Mapping[str, float | None],
    features: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    *,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    composite: tuple[Mapping[str, float], Mapping[str, Callable[[float], float]]] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> dict[str, tuple[float, float]]:
    """``{metric: (lo, hi)}`` percentile intervals at ``level`` from ``resamples`` seeded resamples of the samples.

    ``composite`` is the (weights, mappings) the composite was computed with; its interval comes from the
    composite of each resample's component values.
    """
    n = _sample_count(features)
    if n < 2:
        return {}
    counts = resample_counts(n, resamples, seed)
    reps = metric_replicates(scores, features, reference, counts, seed, options)
    if composite is not None and scores.get("composite_score") is not None:
        comp = composite_replicates(reps, *composite)
        if comp is not None:
            reps["composite_score"] = comp
    out: dict[str, tuple[float, float]] = {}
    for name, r in reps.items():
        ci = percentile_interval(r, level, center=scores[name])
        if ci is None:
            logger.warning("no interval for %s: a resample has no finite value (too few samples?)", name)
        else:
            out[name] = ci
    return out
