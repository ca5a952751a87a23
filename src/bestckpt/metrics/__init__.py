"""Pure metric functions over features (numpy/torch only; nothing else of bestckpt is imported, no disk I/O).

FID, KID, Inception Score, CLIP score, LPIPS (pure part), the composite score and the metric registry. See each
module's docstring for the formula, the reference implementation it agrees with and its failure contract: a metric
raises (``MetricError`` / ``ValueError``) instead of returning a made-up number.
"""
from __future__ import annotations

from bestckpt.errors import CompositeUnavailableError, MetricError, NumericalError

from .bootstrap import metric_intervals
from .clip_score import CLIP_CONVENTIONS, clip_cosines, clip_score
from .composite import (
    DEFAULT_WEIGHTS,
    InverseMap,
    LinearMap,
    LogisticMap,
    RatioMap,
    ReciprocalComplementMap,
    ScoreMap,
    check_composite_weights,
    composite_score,
    default_mappings,
)
from .fid import ReferenceStatistics, fid_from_features, fid_from_statistics
from .inception_score import inception_score_from_logits
from .intervals import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from .kid import kid_from_features
from .lpips import lpips_from_features
from .registry import (
    DEFAULT_METRICS,
    FEATURE_CLIP_IMAGE,
    FEATURE_CLIP_TEXT,
    FEATURE_INCEPTION_LOGITS,
    FEATURE_INCEPTION_POOL,
    FEATURE_LPIPS,
    METRICS,
    REFERENCE_FID_STATISTICS,
    REFERENCE_INCEPTION_POOL,
    MetricSpec,
    composite_defaults,
    register_metric,
    unregister_metric,
)

__all__ = [
    "CLIP_CONVENTIONS", "DEFAULT_METRICS", "clip_cosines", "clip_score",
    "DEFAULT_WEIGHTS", "InverseMap", "LinearMap", "LogisticMap", "RatioMap", "ReciprocalComplementMap", "ScoreMap",
    "check_composite_weights", "composite_score", "default_mappings",
    "CompositeUnavailableError", "MetricError", "NumericalError",
    "ReferenceStatistics", "fid_from_features", "fid_from_statistics",
    "inception_score_from_logits", "kid_from_features", "lpips_from_features",
    "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "metric_intervals",
    "FEATURE_CLIP_IMAGE", "FEATURE_CLIP_TEXT", "FEATURE_INCEPTION_LOGITS", "FEATURE_INCEPTION_POOL", "FEATURE_LPIPS",
    "METRICS", "REFERENCE_FID_STATISTICS", "REFERENCE_INCEPTION_POOL", "MetricSpec", "composite_defaults",
    "register_metric", "unregister_metric",
]
