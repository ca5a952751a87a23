"""Registry of metrics: name, direction, which per-sample features (and reference data) each one needs.

Direction is metadata (``higher_is_better``), never a ``reverse=True`` trick. A metric function has the signature
``fn(features, reference, seed, **options) -> float | Mapping[str, float]`` where ``features`` maps feature names
(below) to per-sample tensors [N, ...], ``reference`` maps reference names to reference data (or is None), and a
returned mapping holds the primary value under the metric's own name plus extras (e.g. ``"kid_std"``).

A custom metric in a few lines::

    from bestckpt.metrics import register_metric, FEATURE_CLIP_IMAGE
    register_metric("clip_image_norm", lambda f, ref, seed: float(f[FEATURE_CLIP_IMAGE].norm(dim=1).mean()),
                    higher_is_better=True, needs=(FEATURE_CLIP_IMAGE,), composite_weight=0.1)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .clip_score import clip_score
from .composite import (
    DEFAULT_WEIGHTS,
    LogisticMap,
    ScoreMap,
    check_composite_weights,
    default_mappings,
)
from .fid import ReferenceStatistics
from .inception_score import inception_score_from_logits
from .kid import kid_from_features

__all__ = [
    "DEFAULT_METRICS", "MetricSpec", "METRICS", "register_metric", "unregister_metric", "composite_defaults",
    "FEATURE_INCEPTION_POOL", "FEATURE_INCEPTION_LOGITS", "FEATURE_CLIP_IMAGE", "FEATURE_CLIP_TEXT",
    "FEATURE_LPIPS", "REFERENCE_INCEPTION_POOL", "REFERENCE_FID_STATISTICS",
]

#: The metrics an evaluation computes unless told otherwise (the guide's four, KID, and the composite).
DEFAULT_METRICS = ("clip_score", "lpips", "inception_score", "fid", "kid", "composite_score")

#: Per-sample feature names produced by the evaluation's feature pass.
FEATURE_INCEPTION_POOL = "inception_pool"      # [N, 2048] pool3 features of the FID Inception
FEATURE_INCEPTION_LOGITS = "inception_logits"  # [N, 1008] logits_unbiased of the FID Inception
FEATURE_CLIP_IMAGE = "clip_image"              # [N, E] L2-normalised CLIP image embeddings
FEATURE_CLIP_TEXT = "clip_text"                # [N, E] L2-normalised CLIP text embeddings (prompt i of image i)
FEATURE_LPIPS = "lpips_distance"               # [N] LPIPS distance of image i to its paired reference image
#: Reference data names.
REFERENCE_INCEPTION_POOL = "inception_pool"    # [M, 2048] reference features (KID)
REFERENCE_FID_STATISTICS = "fid_statistics"    # ReferenceStatistics (FID)

MetricFn = Callable[..., "float | Mapping[str, float]"]


@dataclass(frozen=True)
class MetricSpec:
    """What the evaluation needs to know about one metric."""

    name: str
    higher_is_better: bool
    needs: tuple[str, ...]
    fn: MetricFn | None = None
    needs_reference: tuple[str, ...] = ()
    composite_weight: float | None = None
    mapping: ScoreMap | None = None
    description: str = ""


def _need_reference(reference: Mapping[str, Any] | None, key: str, metric: str) -> Any:
    if reference is None or key not in reference:
        raise ValueError(f"{metric} needs a reference image set ({key!r}); pass reference images or drop {metric!r}")
    return reference[key]


def _fid(features: Mapping[str, Any], reference: Mapping[str, Any] | None, seed: int) -> float:
    stats: ReferenceStatistics = _need_reference(reference, REFERENCE_FID_STATISTICS, "fid")
    return stats.fid_to_features(features[FEATURE_INCEPTION_POOL])


def _kid(features: Mapping[str, Any], reference: Mapping[str, Any] | None, seed: int,
         subsets: int = 100, subset_size: int = 1000) -> dict[str, float]:
    """{"kid": mean, "kid_std": std}; no "kid_std" when every subset is the whole set (its 0.00 means nothing)."""
    ref = _need_reference(reference, REFERENCE_INCEPTION_POOL, "kid")
    mean, std = kid_from_features(features[FEATURE_INCEPTION_POOL], ref, subsets=subsets,
                                  subset_size=subset_size, seed=seed)
    return {"kid": mean} if std is None else {"kid": mean, "kid_std": std}


def _inception_score(features: Mapping[str, Any], reference: Mapping[str, Any] | None, seed: int,
                     splits: int = 10) -> dict[str, float]:
    mean, std = inception_score_from_logits(features[FEATURE_INCEPTION_LOGITS], splits=splits, seed=seed)
    return {"inception_score": mean, "inception_score_std": std}


def _clip(features: Mapping[str, Any], reference: Mapping[str, Any] | None, seed: int,
          convention: str = "cosine") -> float:
    return clip_score(features[FEATURE_CLIP_IMAGE], features[FEATURE_CLIP_TEXT], convention=convention)


def _lpips(features: Mapping[str, Any], reference: Mapping[str, Any] | None, seed: int) -> float:
    d = features[FEATURE_LPIPS]
    if d.numel() == 0:
        raise ValueError("LPIPS needs at least one generated image with a paired reference image, got none")
    return float(d.double().mean())


_defaults = default_mappings("cosine")
METRICS: dict[str, MetricSpec] = {
    "clip_score": MetricSpec("clip_score", True, (FEATURE_CLIP_IMAGE, FEATURE_CLIP_TEXT), _clip, (),
                             DEFAULT_WEIGHTS["clip_score"], _defaults["clip_score"], "paired CLIP score"),
    "lpips": MetricSpec("lpips", False, (FEATURE_LPIPS,), _lpips, (), DEFAULT_WEIGHTS["lpips"],
                        _defaults["lpips"], "mean LPIPS distance to the paired reference"),
    "inception_score": MetricSpec("inception_score", True, (FEATURE_INCEPTION_LOGITS,), _inception_score, (),
                                  DEFAULT_WEIGHTS["inception_score"], _defaults["inception_score"],
                                  "Inception Score (torch-fidelity definition)"),
    "fid": MetricSpec("fid", False, (FEATURE_INCEPTION_POOL,), _fid, (REFERENCE_FID_STATISTICS,),
                      DEFAULT_WEIGHTS["fid"], _defaults["fid"], "Fréchet Inception Distance"),
    "kid": MetricSpec("kid", False, (FEATURE_INCEPTION_POOL,), _kid, (REFERENCE_INCEPTION_POOL,), None, None,
                      "Kernel Inception Distance (unbiased)"),
    "composite_score": MetricSpec("composite_score", True, (), None, (), None, None,
                                  "weighted mean of mapped components (bestckpt.metrics.composite)"),
}
_BUILTIN = frozenset(METRICS)


def register_metric(
    name: str,
    fn: MetricFn,
    higher_is_better: bool,
    needs: tuple[str, ...],
    composite_weight: float | None = None,
    mapping: ScoreMap | None = None,
    *,
    needs_reference: tuple[str, ...] = (),
    description: str = "",
    replace: bool = False,
) -> MetricSpec:
    """Register a custom metric; with ``composite_weight`` it joins the default composite.

    Without ``mapping`` a composite member gets ``LogisticMap(higher_is_better=...)`` (bounded, monotone for any
    real value); pass a mapping matched to the metric's range for a more sensitive scale.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if name in METRICS and not replace:
        raise ValueError(f"metric {name!r} is already registered; pass replace=True or choose another name")
    if not callable(fn):
        raise TypeError(f"fn for metric {name!r} must be callable, got {type(fn).__name__}")
    if composite_weight is not None and mapping is None:
        mapping = LogisticMap(higher_is_better=higher_is_better)
    check_composite_weights({} if composite_weight is None else {name: composite_weight},
                            {} if mapping is None else {name: mapping},
                            higher_is_better={name: higher_is_better}, allow_empty=True)
    spec = MetricSpec(name, bool(higher_is_better), tuple(needs), fn, tuple(needs_reference), composite_weight,
                      mapping, description)
    METRICS[name] = spec
    return spec


def unregister_metric(name: str) -> None:
    """Remove a custom metric (built-ins cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is built in and cannot be unregistered")
    METRICS.pop(name, None)


def composite_defaults() -> tuple[dict[str, float], dict[str, ScoreMap]]:
    """(weights, mappings) of the default composite: every registered metric with a composite weight.

    The defaults ``composite_score`` is called with: ``composite_score(values, *composite_defaults())``.
    """
    weights = {k: s.composite_weight for k, s in METRICS.items() if s.composite_weight is not None}
    mappings = {k: s.mapping for k, s in METRICS.items() if s.mapping is not None}
    return weights, mappings  # type: ignore[return-value]
