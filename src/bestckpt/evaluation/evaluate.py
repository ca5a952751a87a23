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
    rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    device = torch.device(device)
    path = Path(checkpoint_path)
    n = protocol.num_samples
    prompts_all = protocol.sample_prompts
    seeds_all = protocol.sample_seeds
    size = protocol.sampler.image_size
    shard = shard_range(n, rank, world)
    keep = min(saved_samples, len(protocol.prompts), n)  # indices < keep are written as files

    local_error: str | None = None
    weights_seen: set[str] = set()
    feature_parts: dict[str, list[torch.Tensor]] = {}
    preview_parts: list[torch.Tensor] = []
    try:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        for lo in range(shard.start, shard.stop, batch_size):
            idx = range(lo, min(lo + batch_size, shard.stop))
            prompts = [prompts_all[i] for i in idx]
            seeds = [seeds_all[i] for i in idx]
            try:
                with torch.no_grad():
                    raw = sampler(path, prompts, seeds, protocol.sampler, device)
            except Exception as exc:  # name the checkpoint: "pop from empty list" alone helps nobody
                raise RuntimeError(f"sampler failed on checkpoint {str(path)!r}: {_describe(exc)}") from exc
            batch = validate_sample_batch(raw, expected_n=len(idx), image_size=size)
            weights_seen.add(batch.weights)
            refs = paired_references(protocol, idx, (size, size)) if "lpips" in protocol.metrics else None
            with torch.no_grad():
                feats = scorer.features(batch.images, prompts, refs)
            for key, value in feats.items():
                if not isinstance(value, torch.Tensor) or value.shape[0] != len(idx):
                    raise RuntimeError(f"scorer feature {key!r} is not a per-sample tensor of length {len(idx)}")
                feature_parts.setdefault(key, []).append(value.detach().cpu())
            take = [j for j, i in enumerate(idx) if i < keep]
            if take:
                preview_parts.append(batch.images[take])
        if len(weights_seen) > 1:
            raise RuntimeError(f"sampler mixed weights {sorted(weights_seen)} within one evaluation")
    except Exception as exc:  # recorded, agreed on below; training goes on
        local_error = str(exc) if type(exc) is RuntimeError and str(exc).startswith("sampler failed") else _describe(exc)
        logger.debug("evaluation of step %d failed on rank %d", step, rank, exc_info=True)

    # --- status exchange: every rank learns every failure before any data collective
    # layout: feature key -> (per-sample shape, dtype), so a rank with an empty shard can take part
    local_layout = None
    if local_error is None:
        local_layout = tuple(
            (k, tuple(v[0].shape[1:]), str(v[0].dtype).removeprefix("torch.")) for k, v in sorted(feature_parts.items())
        )
    statuses = gather_objects((local_error, local_layout, sorted(weights_seen)), ctx)
    errors = [f"rank {r}: {s[0]}" if world > 1 else s[0] for r, s in enumerate(statuses) if s[0] is not None]
    key_sets = {s[1] for s in statuses if s[1]}
    if not errors and len(key_sets) > 1:
        errors = [f"ranks produced different feature keys: {sorted(key_sets)}"]
    weights_all = sorted({w for s in statuses for w in s[2]})
    weights = weights_all[0] if len(weights_all) == 1 else ("unknown" if not weights_all else "mixed")
    if not errors and weights == "mixed":
        errors = [f"ranks sampled different weights: {weights_all}"]
    if errors:
        message = "; ".join(errors)
        logger.error("evaluation of step %d failed: %s", step, message)
        return EvaluationResult(step=step, scores={}, protocol_hash=protocol.hash, weights=weights,
                                duration=time.perf_counter() - started, error=message, num_samples=n)

    layout = next(iter(key_sets)) if key_sets else ()
    gathered: dict[str, torch.Tensor] = {}
    for key, shape, dtype in layout:
        if feature_parts.get(key):
            local = torch.cat(feature_parts[key])
        else:  # an empty shard (more ranks than samples) still enters the collective
            local = torch.zeros((0, *shape), dtype=getattr(torch, dtype))
        gathered[key] = all_gather_padded(local, ctx)
    preview_local = torch.cat(preview_parts) if preview_parts else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    preview = all_gather_padded(preview_local, ctx)

    # --- rank 0 scores, everyone receives the same answer
    outcome: tuple[dict[str, float | None], str | None, dict[str, str]] | None = None
    if rank == 0:
        try:
            raw_scores = scorer.score(gathered, reference_stats, seed=protocol.seed)
            # the scorer reports failed metrics as None with the reason in .failures
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
            outcome = (scores, None, failures)
        except Exception as exc:
            logger.debug("scoring step %d failed", step, exc_info=True)
            outcome = ({}, _describe(exc), {})
    outcome = broadcast_object(outcome, ctx)
    assert outcome is not None
    scores, score_error, failures = outcome

    written: Path | None = None
    if rank == 0 and score_error is None and samples_dir is not None and preview.shape[0] > 0:
        try:
            refs = None
            if protocol.reference_images is not None:
                refs = [
                    None if protocol.sample_reference(i) is None else load_image_uint8(protocol.sample_reference(i))
                    for i in range(preview.shape[0])
                ]
            written = write_evaluation_samples(samples_dir, step, preview, list(prompts_all[: preview.shape[0]]), refs)
        except Exception:  # sample files are for people; never lose a score over them
            logger.exception("could not write evaluation samples for step %d", step)
    if score_error is not None:
        logger.error("scoring step %d failed: %s", step, score_error)
    return EvaluationResult(
        step=step,
        scores=scores,
        protocol_hash=protocol.hash,
        weights=weights,
        duration=time.perf_counter() - started,
        error=score_error,
        num_samples=n,
        samples_dir=written,
        failures=failures,
        preview=preview if rank == 0 else None,
    )
