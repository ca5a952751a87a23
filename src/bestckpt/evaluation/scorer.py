"""Scorer: one feature pass per backbone, cached reference statistics, all requested metrics + the composite.

Flow::

    scorer = Scorer(metrics=("clip_score", "lpips", "inception_score", "fid", "kid", "composite_score"))
    feats = scorer.features(images_uint8, prompts, paired_references)   # per-sample tensors, shardable
    ref = scorer.reference_statistics(reference_images_uint8)           # computed once, cached on disk
    scores = scorer.score(feats, ref, seed=0)                           # Scores (a dict) + .failures

``features`` runs every needed backbone exactly once per image and returns ``dict[str, Tensor[N, ...]]`` keyed by
the feature names of :mod:`bestckpt.metrics.registry` (``inception_pool`` [N, 2048], ``inception_logits`` [N, 1008],
``clip_image``/``clip_text`` [N, E], ``lpips_distance`` [N]; NaN marks a sample without a paired reference, so pairs
never shift out of alignment). Distributed ranks featurise their shards and concatenate before ``score``.

``reference_statistics`` returns a :class:`ReferenceSet` (``inception_pool`` features for KID and
:class:`~bestckpt.metrics.ReferenceStatistics` with its cached covariance factor for FID). On disk it is cached as
``refstats-<backbone cache id>-<sha256 of the uint8 reference tensor>.npz`` — the name encodes backbone, weights,
layer, preprocessing and data — written atomically (:func:`bestckpt.fsio.atomic_write_bytes`).

Failure contract: ``score`` never invents a number. A metric that cannot be computed (missing feature, no reference
set, degenerate input, numerical failure) appears in the result as ``None`` and its reason in
``Scores.failures[name]`` (a :class:`MetricFailure`); the composite is then ``None`` as well if it needs that
component. With ``strict=True`` the first failure raises :class:`~bestckpt.metrics.MetricError` instead. The
tracker stores ``None`` as a failed value that can never become best.

Intervals: ``score`` also gives ``Scores.intervals`` — ``{metric: (lo, hi)}`` 95% bootstrap intervals from the same
features, seeded by the evaluation's seed (:mod:`bestckpt.metrics.intervals`; the composite's from its own
replicates). A metric without an interval is absent from it, never given a made-up one. ``intervals=False`` skips it.

Composite: :class:`CompositeConfig` (weights and mappings). By default the weights are the guide's (and any custom
metric registered with a composite weight) restricted to the metrics this scorer computes, and the CLIP mapping
follows the CLIP convention in use.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bestckpt.backbones import DEFAULT_BACKBONES, get_backbone
from bestckpt.backbones.images import check_uint8_images
from bestckpt.fsio import atomic_write_bytes
from bestckpt.metrics import (
    DEFAULT_LEVEL,
    DEFAULT_METRICS,
    DEFAULT_RESAMPLES,
    FEATURE_CLIP_IMAGE,
    FEATURE_CLIP_TEXT,
    FEATURE_INCEPTION_LOGITS,
    FEATURE_INCEPTION_POOL,
    FEATURE_LPIPS,
    METRICS,
    REFERENCE_FID_STATISTICS,
    REFERENCE_INCEPTION_POOL,
    CompositeUnavailableError,
    MetricError,
    ReferenceStatistics,
    ScoreMap,
    check_composite_weights,
    composite_defaults,
    composite_score,
    default_mappings,
    metric_intervals,
)

__all__ = ["Scorer", "CompositeConfig", "MetricFailure", "Scores", "ReferenceSet", "DEFAULT_METRICS"]

logger = logging.getLogger(__name__)

_INCEPTION_FEATURES = {FEATURE_INCEPTION_POOL, FEATURE_INCEPTION_LOGITS}
_CLIP_FEATURES = {FEATURE_CLIP_IMAGE, FEATURE_CLIP_TEXT}


@dataclass(frozen=True)
class CompositeConfig:
    """Composite weights (positive) and mappings; None means the defaults described in the module docstring."""

    weights: Mapping[str, float] | None = None
    mappings: Mapping[str, ScoreMap] | None = None

    def resolve(self, metrics: Sequence[str], clip_convention: str) -> tuple[dict[str, float], dict[str, ScoreMap]]:
        reg_weights, reg_mappings = composite_defaults()
        mappings = {**reg_mappings, **default_mappings(clip_convention), **dict(self.mappings or {})}
        if self.weights is None:
            weights = {k: w for k, w in reg_weights.items() if k in metrics}
        else:
            weights = {k: float(w) for k, w in self.weights.items() if float(w) != 0.0}
        chosen = {k: mappings[k] for k in weights if k in mappings}
        check_composite_weights(weights, chosen, computed=metrics,
                                higher_is_better={k: spec.higher_is_better for k, spec in METRICS.items()})
        return weights, chosen


@dataclass(frozen=True)
class MetricFailure:
    """Why a metric has no value in this evaluation."""

    metric: str
    error: str


class Scores(dict):
    """``dict[str, float | None]`` of metric values (None = failed) with ``failures: dict[str, MetricFailure]`` and
    ``intervals: dict[str, tuple[float, float]]`` (bootstrap confidence intervals; absent = none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: dict[str, MetricFailure] = {}
        self.intervals: dict[str, tuple[float, float]] = {}


@dataclass
class ReferenceSet(Mapping[str, Any]):
    """Reference data for FID/KID: pool features [M, D] and FID statistics, plus where they came from."""

    features: torch.Tensor
    statistics: ReferenceStatistics
    content_hash: str
    backbone: str
    path: Path | None = None
    _items: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._items = {REFERENCE_INCEPTION_POOL: self.features, REFERENCE_FID_STATISTICS: self.statistics}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _hash_images(images: torch.Tensor) -> str:
    t = images.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


class Scorer:
    """Computes the requested metrics of generated images (see the module docstring for the contract)."""

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        backbones: Mapping[str, str] | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        device: Any = "cpu",
        composite: CompositeConfig | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        clip_convention: str = "cosine",
        metric_options: Mapping[str, Mapping[str, Any]] | None = None,
        intervals: bool = True,
        interval_resamples: int = DEFAULT_RESAMPLES,
        interval_level: float = DEFAULT_LEVEL,
    ) -> None:
        self.metrics = tuple(dict.fromkeys(metrics))
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)} (register custom ones with "
                             f"bestckpt.metrics.register_metric)")
        if not self.metrics:
            raise ValueError("metrics is empty; request at least one metric")
        self.backbone_names = {**DEFAULT_BACKBONES, **dict(backbones or {})}
        self.weights_dir = weights_dir
        self.device = torch.device(device)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.clip_convention = clip_convention
        self.metric_options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (metric_options or {}).items()}
        if clip_convention != "cosine":
            self.metric_options.setdefault("clip_score", {})["convention"] = clip_convention
        self.composite = composite or CompositeConfig()
        self._composite_resolved = (
            self.composite.resolve(self.metrics, clip_convention) if "composite_score" in self.metrics else None
        )
        self.intervals = bool(intervals)
        self.interval_resamples = int(interval_resamples)
        self.interval_level = float(interval_level)
        self.needed_features = {f for m in self.metrics for f in METRICS[m].needs}
        self._memory_refs: dict[tuple[str, str], ReferenceSet] = {}

    # ------------------------------------------------------------------ backbones
    def backbone(self, kind: str) -> Any:
        """The (process-cached) backbone of ``kind`` this scorer uses."""
        return get_backbone(kind, self.backbone_names[kind], weights_dir=self.weights_dir, device=self.device)

    # ------------------------------------------------------------------ features
    def features(self, images: torch.Tensor, prompts: Sequence[str] | None = None,
                 paired_references: torch.Tensor | Sequence[torch.Tensor | None] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Per-sample features of uint8 images [N, 3, H, W]; each needed backbone runs once per image."""
        images = check_uint8_images(images, "images")
        n = images.shape[0]
        out: dict[str, torch.Tensor] = {}
        if self.needed_features & _INCEPTION_FEATURES:
            f = self.backbone("inception").features(images)
            out[FEATURE_INCEPTION_POOL], out[FEATURE_INCEPTION_LOGITS] = f["pool"], f["logits"]
        if self.needed_features & _CLIP_FEATURES:
            if prompts is None or len(prompts) != n:
                raise ValueError(f"CLIP score pairs each image with its own prompt: got {n} images and "
                                 f"{'no' if prompts is None else len(prompts)} prompts")
            clip = self.backbone("clip")
            out[FEATURE_CLIP_IMAGE] = clip.encode_images(images)
            out[FEATURE_CLIP_TEXT] = clip.encode_texts(list(prompts))
        if FEATURE_LPIPS in self.needed_features:
            out[FEATURE_LPIPS] = self._lpips(images, paired_references)
        return out

    def _lpips(self, images: torch.Tensor, refs: Any) -> torch.Tensor:
        n = images.shape[0]
        dist = torch.full((n,), float("nan"))
        if refs is None:
            return dist  # no pairs: LPIPS fails at score time with a clear reason
        lp = self.backbone("lpips")
        if isinstance(refs, torch.Tensor):
            refs = check_uint8_images(refs, "paired_references")
            if refs.shape[0] != n:
                raise ValueError(f"paired_references has {refs.shape[0]} images for {n} generated images; pass one "
                                 f"per image (None in a list for images without a reference)")
            return lp.distance(images, refs).float()
        if len(refs) != n:
            raise ValueError(f"paired_references has {len(refs)} entries for {n} images; use None for missing ones")
        for i, r in enumerate(refs):
            if r is not None:
                r = check_uint8_images(r.unsqueeze(0) if r.dim() == 3 else r, f"paired_references[{i}]")
                dist[i] = lp.distance(images[i:i + 1], r)[0]
        return dist

    # ------------------------------------------------------------------ reference statistics
    def reference_statistics(self, reference_images: torch.Tensor,
                             cache_dir: str | os.PathLike[str] | None = None) -> ReferenceSet:
        """FID/KID reference data of uint8 images [M, 3, H, W]; cached in memory and (with a cache dir) on disk."""
        images = check_uint8_images(reference_images, "reference_images")
        if images.shape[0] < 2:
            raise ValueError(f"a reference set needs at least 2 images, got {images.shape[0]}")
        inception = self.backbone("inception")
        backbone_id = getattr(inception, "cache_id", self.backbone_names["inception"])
        digest = _hash_images(images)
        key = (backbone_id, digest)
        if key in self._memory_refs:
            return self._memory_refs[key]
        cdir = Path(cache_dir) if cache_dir is not None else self.cache_dir
        path = None
        if cdir is not None:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id)
            path = cdir / f"refstats-{safe}-{digest[:32]}.npz"
            ref = self._load_cached(path, backbone_id, digest)
            if ref is not None:
                self._memory_refs[key] = ref
                return ref
        feats = inception.features(images)["pool"]
        stats = ReferenceStatistics.from_features(feats)
        _ = stats.factor  # factorise once, store with the statistics
        ref = ReferenceSet(feats, stats, digest, backbone_id, path)
        if path is not None:
            self._save_cached(path, ref)
        self._memory_refs[key] = ref
        return ref

    @staticmethod
    def _load_cached(path: Path, backbone_id: str, digest: str) -> ReferenceSet | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["content_hash"]) != digest or str(z["backbone"]) != backbone_id:
                    logger.warning("reference cache %s does not match its name; recomputing", path)
                    return None
                stats = ReferenceStatistics.from_arrays({k: z[k] for k in ("mu", "sigma", "factor",
                                                                           "num_samples")})
                feats = torch.from_numpy(z["features"].copy())
        except Exception as exc:  # a damaged cache is recomputed, never trusted
            logger.warning("reference cache %s unreadable (%s); recomputing", path, exc)
            return None
        logger.info("loaded reference statistics from %s", path)
        return ReferenceSet(feats, stats, digest, backbone_id, path)

    @staticmethod
    def _save_cached(path: Path, ref: ReferenceSet) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        arrays = {"features": ref.features.numpy(), "content_hash": np.asarray(ref.content_hash),
                  "backbone": np.asarray(ref.backbone), **ref.statistics.to_arrays()}
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like its allow_pickle flag
        atomic_write_bytes(path, buf.getbuffer())  # type: ignore[arg-type]  # a buffer: no copy of the features
        logger.info("cached reference statistics at %s", path)

    # ------------------------------------------------------------------ scores
    def score(self, features: Mapping[str, torch.Tensor], reference: Mapping[str, Any] | None = None,
              seed: int = 0, *, strict: bool = False) -> Scores:
        """All requested metrics (+ extras such as ``kid_std``) and the composite; see the failure contract."""
        scores = Scores()
        for name in self.metrics:
            if name == "composite_score":
                continue
            spec = METRICS[name]
            try:
                missing = [f for f in spec.needs if f not in features]
                if missing:
                    raise MetricError(f"features {missing} missing (were they computed by a scorer requesting "
                                      f"{name!r}?)")
                if spec.needs_reference and (reference is None or any(k not in reference
                                                                      for k in spec.needs_reference)):
                    raise MetricError(f"{name} needs a reference image set; pass reference_statistics(...) to score")
                assert spec.fn is not None
                feats = features
                if FEATURE_LPIPS in spec.needs:
                    d = features[FEATURE_LPIPS]
                    if not bool(torch.isfinite(d).any()):
                        raise MetricError("no generated image has a paired reference image; LPIPS needs pairs")
                    feats = {**features, FEATURE_LPIPS: d[torch.isfinite(d)]}
                value = spec.fn(feats, reference, seed, **self.metric_options.get(name, {}))
                values = dict(value) if isinstance(value, Mapping) else {name: value}
                for k, v in values.items():
                    v = float(v)
                    if not math.isfinite(v):
                        raise MetricError(f"{k} evaluated to {v}")
                    scores[k] = v
            except Exception as exc:
                if strict:
                    if isinstance(exc, MetricError):
                        raise
                    raise MetricError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
                logger.warning("metric %s failed: %s: %s", name, type(exc).__name__, exc)
                scores[name] = None
                scores.failures[name] = MetricFailure(name, f"{type(exc).__name__}: {exc}")
        if self._composite_resolved is not None:
            weights, mappings = self._composite_resolved
            try:
                scores["composite_score"] = composite_score(scores, weights, mappings)
            except (CompositeUnavailableError, ValueError) as exc:
                if strict:
                    raise CompositeUnavailableError(str(exc)) from exc
                scores["composite_score"] = None
                scores.failures["composite_score"] = MetricFailure("composite_score", f"{type(exc).__name__}: {exc}")
        if self.intervals:
            scores.intervals = self._intervals(scores, features, reference, seed)
        return scores

    def _intervals(self, scores: Scores, features: Mapping[str, torch.Tensor], reference: Mapping[str, Any] | None,
                   seed: int) -> dict[str, tuple[float, float]]:
        """Bootstrap intervals of the scores; a failure costs the intervals (logged), never the scores."""
        try:
            return metric_intervals(scores, features, reference, seed=seed, options=self.metric_options,
                                    composite=self._composite_resolved, resamples=self.interval_resamples,
                                    level=self.interval_level)
        except Exception as exc:
            logger.warning("no confidence intervals for this evaluation: %s: %s", type(exc).__name__, exc)
            return {}

    def evaluate(self, images: torch.Tensor, prompts: Sequence[str] | None = None,
                 paired_references: Any = None, reference_images: torch.Tensor | None = None,
                 seed: int = 0) -> Scores:
        """Convenience: ``score(features(...), reference_statistics(...), seed)`` in one process."""
        ref = None
        if reference_images is not None and any(METRICS[m].needs_reference for m in self.metrics):
            ref = self.reference_statistics(reference_images)
        return self.score(self.features(images, prompts, paired_references), ref, seed)
