"""Evaluate one committed checkpoint under a fixed protocol: sample, featurise, gather, score.

``evaluate_checkpoint`` is the one function every runner calls (inline, background worker,
sidecar, offline ``bestckpt evaluate``), so a score means the same thing wherever it was made.

Under ``torch.distributed`` each rank samples and featurises a contiguous shard of the samples,
features are all-gathered (padded to equal sizes), rank 0 scores, and the result is broadcast.
Every rank enters every collective in the same order; a local failure is exchanged through a
status collective first, so all ranks skip the rest together instead of hanging (the original's
rank-0-only evaluation deadlocked NCCL).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bestckpt.evaluation.distributed import (
    DistContext,
    all_gather_padded,
    broadcast_object,
    current_context,
    gather_objects,
    shard_range,
)
from bestckpt.evaluation.protocol import Protocol
from bestckpt.evaluation.sampler import Sampler, validate_sample_batch
from bestckpt.evaluation.samples import (
    load_image_uint8,
    resize_uint8,
    write_evaluation_samples,
)

__all__ = [
    "EvaluationResult",
    "evaluate_checkpoint",
    "load_reference_set",
    "paired_references",
    "prepare_reference_statistics",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
#: sample files written per evaluation (the guide's 20; one per prompt)
DEFAULT_SAVED_SAMPLES = 20


@dataclass(frozen=True)
class EvaluationResult:
    """Outcome of one evaluation, identical on every rank.

    scores: metric name -> value (None for a metric the scorer reports as failed); empty on error.
    weights: which weights were sampled ("ema", "online", "unknown").
    error: None when the evaluation succeeded; otherwise why it failed (then it must be recorded
      with ``tracker.record_failure`` so it can never become best).
    preview: uint8 ``Tensor[K, 3, H, W]`` of the saved samples on rank 0 (for sinks), else None.
    intervals: metric name -> (lo, hi) bootstrap confidence interval (the scorer's ``Scores.intervals``); a metric
      without one is absent. Stored by the tracker in the record's ``info["intervals"]`` as ``[lo, hi]``.
    """

    step: int
    scores: Mapping[str, float | None]
    protocol_hash: str
    weights: str
    duration: float
    error: str | None = None
    num_samples: int = 0
    samples_dir: Path | None = None
    failures: Mapping[str, str] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    preview: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def info(self) -> dict[str, Any]:
        """What the tracker stores next to the scores."""
        return {
            "weights": self.weights,
            "duration_s": round(self.duration, 3),
            "num_samples": self.num_samples,
            "samples_dir": None if self.samples_dir is None else str(self.samples_dir),
            **({"metric_failures": dict(self.failures)} if self.failures else {}),
            **({"intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()}} if self.intervals else {}),
        }


def paired_references(protocol: Protocol, indices: range, size: tuple[int, int]) -> torch.Tensor | None:
    """uint8 ``Tensor[len(indices), 3, H, W]`` of the paired references of those samples, resized to ``size``.

    References are resized to the generated size (bilinear, antialiased, rounded) so LPIPS compares
    same-sized images, exactly as in the comparison images the user sees.
    """
    if protocol.reference_images is None or len(indices) == 0:
        return None
    cache: dict[Path, torch.Tensor] = {}
    out = []
    for i in indices:
        path = protocol.sample_reference(i)
        if path is None:  # Protocol forbids partial references when lpips is on
            return None
        if path not in cache:
            cache[path] = resize_uint8(load_image_uint8(path), size)
        out.append(cache[path])
    return torch.stack(out)


def load_reference_set(protocol: Protocol) -> torch.Tensor | None:
    """The FID/KID reference images as uint8 ``Tensor[M, 3, S, S]`` at the protocol's image size.

    Both sides of FID go through the same resize (to ``image_size``) before the backbone's own
    preprocessing, so the comparison is like for like.
    """
    files = protocol.reference_set_files()
    if not files:
        return None
    size = (protocol.sampler.image_size, protocol.sampler.image_size)
    return torch.stack([resize_uint8(load_image_uint8(f), size) for f in files])


def prepare_reference_statistics(protocol: Protocol, scorer: Any, *, cache_dir: str | Path | None = None) -> Any:
    """Reference statistics for FID/KID (None without a reference set); cached on disk by the scorer."""
    if protocol.reference_dir is None:
        return None
    images = load_reference_set(protocol)
    if cache_dir is None:
        return scorer.reference_statistics(images)
    return scorer.reference_statistics(images, cache_dir=cache_dir)

def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


#: feature key -> (per-sample shape, dtype name), in key order: the same on every rank
_Layout = tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass
class _Run:
    """One rank's state of one evaluation, carried from phase to phase.

    ``features`` and ``previews`` collect this rank's shard batch by batch; ``error`` is this rank's
    local failure (None while fine), agreed on with the other ranks before any data collective.
    """

    path: Path
    step: int
    protocol: Protocol
    ctx: DistContext | None
    device: torch.device
    started: float
    keep: int  # sample indices below this are written as files
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    error: str | None = None
    weights_seen: set[str] = field(default_factory=set)
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    previews: list[torch.Tensor] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return 0 if self.ctx is None else self.ctx.rank

    @property
    def world(self) -> int:
        return 1 if self.ctx is None else self.ctx.world_size

    @property
    def size(self) -> int:
        return self.protocol.sampler.image_size

    @property
    def shard(self) -> range:
        return shard_range(self.protocol.num_samples, self.rank, self.world)

    def result(self, **fields: Any) -> EvaluationResult:
        return EvaluationResult(step=self.step, protocol_hash=self.protocol.hash, num_samples=self.protocol.num_samples,
                                duration=time.perf_counter() - self.started, **fields)


@dataclass(frozen=True)
class _Agreement:
    """What every rank learnt from the status exchange: the joint error, weights and feature layout."""

    error: str | None
    weights: str
    layout: _Layout


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    step: int,
    protocol: Protocol,
    sampler: Sampler,
    scorer: Any,
    reference_stats: Any,
    *,
    device: str | torch.device = "cpu",
    samples_dir: str | Path | None = None,
    dist: DistContext | None | str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    saved_samples: int = DEFAULT_SAVED_SAMPLES,
) -> EvaluationResult:
    """Score ``checkpoint_path`` under ``protocol``. Never raises for a failed evaluation.

    Sampler, scorer and checkpoint-loading errors become ``EvaluationResult.error`` (agreed on by
    all ranks); the caller records them with ``tracker.record_failure``. Must be called by every
    rank of the process group when distributed (``dist="auto"`` uses the default group if
    initialised; pass None to force single-process evaluation).
    """
    started = time.perf_counter()
    ctx = current_context() if dist == "auto" else dist
    if isinstance(ctx, str):
        raise ValueError(f"dist must be 'auto', None or a DistContext, got {dist!r}")
    run = _Run(path=Path(checkpoint_path), step=step, protocol=protocol, ctx=ctx, device=torch.device(device),
               started=started, keep=min(saved_samples, len(protocol.prompts), protocol.num_samples),
               prompts=protocol.sample_prompts, seeds=protocol.sample_seeds)
    _sample_and_featurise(run, sampler, scorer, batch_size)
    agreed = _agree(run)
    if agreed.error is not None:
        logger.error("evaluation of step %d failed: %s", step, agreed.error)
        return run.result(scores={}, weights=agreed.weights, error=agreed.error)
    features, preview = _gather(run, agreed.layout)
    scores, score_error, failures, intervals = _score(run, scorer, features, reference_stats)
    written: Path | None = None
    if run.rank == 0 and score_error is None and samples_dir is not None and preview.shape[0] > 0:
        written = _write_samples(run, samples_dir, preview)
    if score_error is not None:
        logger.error("scoring step %d failed: %s", step, score_error)
    return run.result(scores=scores, weights=agreed.weights, error=score_error, samples_dir=written,
                      failures=failures, intervals=intervals, preview=preview if run.rank == 0 else None)


def _sample_and_featurise(run: _Run, sampler: Sampler, scorer: Any, batch_size: int) -> None:
    """Sample and featurise this rank's shard batch by batch; a failure is kept in ``run.error``."""
    try:
        if not run.path.exists():
            raise FileNotFoundError(f"checkpoint {str(run.path)!r} does not exist")
        shard = run.shard
        for lo in range(shard.start, shard.stop, batch_size):
            _sample_batch(run, sampler, scorer, range(lo, min(lo + batch_size, shard.stop)))
        if len(run.weights_seen) > 1:
            raise RuntimeError(f"sampler mixed weights {sorted(run.weights_seen)} within one evaluation")
    except Exception as exc:  # recorded, agreed on in _agree; training goes on
        sampler_failed = type(exc) is RuntimeError and str(exc).startswith("sampler failed")
        run.error = str(exc) if sampler_failed else _describe(exc)
        logger.debug("evaluation of step %d failed on rank %d", run.step, run.rank, exc_info=True)


def _sample_batch(run: _Run, sampler: Sampler, scorer: Any, idx: range) -> None:
    """Sample the images of sample indices ``idx``, keep their features and the ones to save."""
    prompts = [run.prompts[i] for i in idx]
    seeds = [run.seeds[i] for i in idx]
    try:
        with torch.no_grad():
            raw = sampler(run.path, prompts, seeds, run.protocol.sampler, run.device)
    except Exception as exc:  # name the checkpoint: "pop from empty list" alone helps nobody
        raise RuntimeError(f"sampler failed on checkpoint {str(run.path)!r}: {_describe(exc)}") from exc
    batch = validate_sample_batch(raw, expected_n=len(idx), image_size=run.size)
    run.weights_seen.add(batch.weights)
    refs = paired_references(run.protocol, idx, (run.size, run.size)) if "lpips" in (run.protocol.metrics or ()) else None
    with torch.no_grad():
        feats = scorer.features(batch.images, prompts, refs)
    for key, value in feats.items():
        if not isinstance(value, torch.Tensor) or value.shape[0] != len(idx):
            raise RuntimeError(f"scorer feature {key!r} is not a per-sample tensor of length {len(idx)}")
        run.features.setdefault(key, []).append(value.detach().cpu())
    take = [j for j, i in enumerate(idx) if i < run.keep]
    if take:
        run.previews.append(batch.images[take])


def _agree(run: _Run) -> _Agreement:
    """Status exchange (one collective): every rank learns every failure before any data collective.

    The layout (feature key -> per-sample shape and dtype) lets a rank with an empty shard take part
    in the gathers that follow.
    """
    local_layout = None
    if run.error is None:
        local_layout = tuple(
            (k, tuple(v[0].shape[1:]), str(v[0].dtype).removeprefix("torch.")) for k, v in sorted(run.features.items())
        )
    statuses = gather_objects((run.error, local_layout, sorted(run.weights_seen)), run.ctx)
    errors = [f"rank {r}: {s[0]}" if run.world > 1 else s[0] for r, s in enumerate(statuses) if s[0] is not None]
    key_sets = {s[1] for s in statuses if s[1]}
    if not errors and len(key_sets) > 1:
        errors = [f"ranks produced different feature keys: {sorted(key_sets)}"]
    weights_all = sorted({w for s in statuses for w in s[2]})
    weights = weights_all[0] if len(weights_all) == 1 else ("unknown" if not weights_all else "mixed")
    if not errors and weights == "mixed":
        errors = [f"ranks sampled different weights: {weights_all}"]
    layout = next(iter(key_sets)) if key_sets else ()
    return _Agreement(error="; ".join(errors) if errors else None, weights=weights, layout=layout)


def _gather(run: _Run, layout: _Layout) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All-gather every feature (in layout order), then the preview images: the same collectives on every rank."""
    gathered: dict[str, torch.Tensor] = {}
    for key, shape, dtype in layout:
        if run.features.get(key):
            local = torch.cat(run.features[key])
        else:  # an empty shard (more ranks than samples) still enters the collective
            local = torch.zeros((0, *shape), dtype=getattr(torch, dtype))
        gathered[key] = all_gather_padded(local, run.ctx)
    if run.previews:
        preview_local = torch.cat(run.previews)
    else:
        preview_local = torch.zeros((0, 3, run.size, run.size), dtype=torch.uint8)
    return gathered, all_gather_padded(preview_local, run.ctx)


_Outcome = tuple[dict[str, float | None], str | None, dict[str, str], dict[str, tuple[float, float]]]


def _score(run: _Run, scorer: Any, features: dict[str, torch.Tensor], reference_stats: Any) -> _Outcome:
    """Rank 0 scores; every rank receives the same ``(scores, error, failures, intervals)`` (one broadcast)."""
    outcome: _Outcome | None = None
    if run.rank == 0:
        try:
            raw = scorer.score(features, reference_stats, seed=run.protocol.seed)
            scores, failures = _checked_scores(raw)
            outcome = (scores, None, failures, _checked_intervals(getattr(raw, "intervals", None), scores))
        except Exception as exc:
            logger.debug("scoring step %d failed", run.step, exc_info=True)
            outcome = ({}, _describe(exc), {}, {})
    outcome = broadcast_object(outcome, run.ctx)
    assert outcome is not None
    return outcome


def _checked_scores(raw_scores: Any) -> tuple[dict[str, float | None], dict[str, str]]:
    """The scorer's answer as ``(scores, failures)``: floats (None for a failed metric), reasons by metric.

    The scorer reports failed metrics as None with the reason in ``.failures``; a non-finite value
    is an error of the whole scoring.
    """
    failures = {str(k): str(getattr(v, "error", v)) for k, v in getattr(raw_scores, "failures", {}).items()}
    scores: dict[str, float | None] = {}
    for name, value in dict(raw_scores).items():
        if value is None:
            scores[name] = None
            continue
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"scorer returned non-finite {name}={value}")
        scores[name] = value
    return scores, failures


def _checked_intervals(raw: Any, scores: Mapping[str, float | None]) -> dict[str, tuple[float, float]]:
    """The scorer's intervals as finite ``(lo, hi)`` float pairs, only for metrics that have a value."""
    out: dict[str, tuple[float, float]] = {}
    for name, pair in dict(raw or {}).items():
        lo, hi = (float(v) for v in pair)
        if scores.get(name) is not None and math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
            out[str(name)] = (lo, hi)
    return out


def _write_samples(run: _Run, samples_dir: str | Path, preview: torch.Tensor) -> Path | None:
    """Write the saved samples (with their references) on rank 0; a failure is logged, never raised."""
    protocol = run.protocol
    try:
        refs = None
        if protocol.reference_images is not None:
            paths = [protocol.sample_reference(i) for i in range(preview.shape[0])]
            refs = [None if p is None else load_image_uint8(p) for p in paths
            ]
        return write_evaluation_samples(samples_dir, run.step, preview, list(run.prompts[: preview.shape[0]]), refs)
    except Exception:  # sample files are for people; never lose a score over them
        logger.exception("could not write evaluation samples for step %d", run.step)
        return None
