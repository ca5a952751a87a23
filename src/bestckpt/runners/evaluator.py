"""Evaluate one checkpoint and record the outcome: :class:`Evaluator`, shared by every runner.

The scorer and the reference statistics are built once, on the first evaluation, and reused.
Heavy imports (torch, the metrics) happen inside the functions, so importing the runners stays light.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch-heavy modules: imported for annotations only
    import torch

    from bestckpt.evaluation.contracts import ScorerLike
    from bestckpt.evaluation.distributed import DistContext
    from bestckpt.evaluation.evaluate import EvaluationResult
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.evaluation.sampler import Sampler
    from bestckpt.evaluation.scorer import Scorer
    from bestckpt.tracking.tracker import BestCheckpointTracker

from bestckpt.errors import ConfigError
from bestckpt.sinks.base import EvaluationEvent, SinkSpec, evaluation_images, make_sinks

__all__ = ["Evaluator", "build_scorer", "default_device"]

logger = logging.getLogger(__name__)


def default_device() -> str:
    """The training device: this process's current CUDA device when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


def build_scorer(protocol: Protocol, *, device: str | torch.device = "cpu", weights_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> Scorer:
    """The metrics engineer's :class:`~bestckpt.evaluation.scorer.Scorer` configured by the protocol."""
    from bestckpt.evaluation import scorer as scorer_mod

    options = protocol.metric_options
    kwargs: dict[str, Any] = dict(
        # Protocol.__post_init__ resolves metrics to a non-empty tuple; `or ()` only informs the type checker
        metrics=tuple(protocol.metrics or ()), backbones=dict(protocol.backbones), weights_dir=weights_dir,
        device=str(device), cache_dir=cache_dir,
    )
    if options:
        kwargs["metric_options"] = {k: dict(v) for k, v in options.items()}
    if protocol.composite_weights is not None or protocol.composite_mappings is not None:
        from bestckpt.evaluation.composite import protocol_composite_config

        kwargs["composite"] = protocol_composite_config(protocol)
    return scorer_mod.Scorer(**kwargs)


class Evaluator:
    """Protocol + sampler + scorer + sinks: evaluates one checkpoint and records the outcome.

    The scorer and the reference statistics are built on the first evaluation and reused (the
    original reloaded every backbone at every evaluation). ``device`` defaults to the training
    device (:func:`default_device`); pass e.g. ``"cuda:1"`` to evaluate on another GPU. Under
    ``torch.distributed`` every rank must call :meth:`evaluate` for the same checkpoint.
    """

    def __init__(
        self,
        protocol: Protocol,
        sampler: Sampler,
        *,
        scorer: ScorerLike | None = None,
        device: str | torch.device | None = None,
        samples_dir: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        weights_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        dist: DistContext | Literal["auto"] | None = "auto",
        batch_size: int = 16,
        sinks: SinkSpec | Any = None,
    ) -> None:
        self.protocol = protocol
        self.sampler = sampler
        self.scorer: ScorerLike | None = scorer
        self.device = default_device() if device is None else str(device)
        self.samples_dir = None if samples_dir is None else Path(samples_dir)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self.weights_dir = weights_dir
        self.cache_dir = cache_dir
        self.dist = dist
        self.batch_size = batch_size
        self._reference_stats: Mapping[str, Any] | None = None
        self._ready = False
        spec = SinkSpec.coerce(sinks)
        if self.tensorboard_dir is not None:  # the long-standing option: the TensorBoard sink in that folder
            spec = spec.with_sink("tensorboard", log_dir=str(self.tensorboard_dir))
        self.sinks = spec
        self._sinks: list[Any] | None = None  # built on the first record (a sink's library loads only then)

    def _ctx(self) -> DistContext | None:
        from bestckpt.evaluation.distributed import current_context

        if self.dist == "auto":
            return current_context()
        return self.dist

    def _setup(self) -> None:
        from bestckpt.evaluation.evaluate import prepare_reference_statistics

        if self.scorer is None:
            self.scorer = build_scorer(self.protocol, device=self.device, weights_dir=self.weights_dir,
                                       cache_dir=self.cache_dir)
        self._reference_stats = prepare_reference_statistics(self.protocol, self.scorer, cache_dir=self.cache_dir)
        self._ready = True

    def _failed(self, step: int, error: str, duration: float, num_samples: int = 0) -> EvaluationResult:
        """An :class:`~bestckpt.evaluation.evaluate.EvaluationResult` with no scores, for a failure before scoring."""
        from bestckpt.evaluation.evaluate import EvaluationResult

        return EvaluationResult(step=step, scores={}, protocol_hash=self.protocol.hash, weights="unknown",
                                duration=duration, error=error, num_samples=num_samples)

    def evaluate(self, step: int, path: str | Path) -> EvaluationResult:
        """The :class:`~bestckpt.evaluation.evaluate.EvaluationResult` of ``path``; never raises for a failed
        evaluation."""
        from bestckpt.evaluation.distributed import agree_on_errors
        from bestckpt.evaluation.evaluate import evaluate_checkpoint

        ctx = self._ctx()
        started = time.perf_counter()
        setup_error = None
        if not self._ready:
            try:
                self._setup()
            except Exception as exc:
                logger.exception("could not set up evaluation (scorer / reference statistics)")
                setup_error = f"evaluation setup failed: {type(exc).__name__}: {exc}"
        # every rank learns whether every rank is ready, so none enters the gathers alone
        errors = agree_on_errors(setup_error, ctx)
        if errors:
            return self._failed(step, "; ".join(errors), time.perf_counter() - started,
                                num_samples=self.protocol.num_samples)
        return evaluate_checkpoint(
            path, step, self.protocol, self.sampler, self.scorer, self._reference_stats, device=self.device,
            samples_dir=self.samples_dir, dist=ctx, batch_size=self.batch_size,
        )

    def record(self, tracker: BestCheckpointTracker, result: EvaluationResult, *, path: str | Path,
               epoch: int | None = None) -> bool:
        """Store ``result`` in the tracker (score or failure) and the sinks; True if it is the new best.

        Only the tracker's writer (global rank 0) records; other ranks return False.
        """
        if not getattr(tracker, "is_writer", True):
            return False
        error = result.error
        if result.ok:
            try:
                is_best = bool(tracker.update_checkpoint(result.step, epoch, str(path), dict(result.scores),
                                                         protocol_hash=result.protocol_hash,
                                                         info={**result.info(),
                                                               "metrics_hash": self.protocol.metrics_hash}))
            except ConfigError as exc:  # a metric that returned no number: a failed evaluation, not a lost one
                error = f"unusable scores: {exc}"
        if error is not None:
            tracker.record_failure(result.step, error, epoch=epoch, checkpoint_path=str(path),
                                   protocol_hash=result.protocol_hash)
            is_best = False
        ctx = self._ctx()
        if self.sinks and (ctx is None or ctx.rank == 0):
            self._log_to_sinks(tracker, result, path=path, epoch=epoch, is_best=is_best, error=error)
        return is_best

    def evaluate_and_record(self, tracker: BestCheckpointTracker, step: int, path: str | Path,
                            epoch: int | None = None) -> EvaluationResult:
        """The runners' unit of work: log, evaluate, record. Never raises for evaluation failures."""
        logger.info("[Step %d] Evaluating model performance at step %d", step, step)
        try:
            result = self.evaluate(step, path)
        except Exception as exc:  # a bug on our side still must not kill training
            logger.exception("evaluation of step %d crashed", step)
            result = self._failed(step, f"{type(exc).__name__}: {exc}", 0.0)
        try:
            self.record(tracker, result, path=path, epoch=epoch)
        except Exception:  # bookkeeping trouble is logged; the checkpoint stays pending, nothing is lost
            logger.exception("could not record the evaluation of step %d; it stays pending", step)
        if result.ok:
            shown = ", ".join(f"{k}: {v:.4f}" if v is not None else f"{k}: failed" for k, v in result.scores.items())
            logger.info("[Step %d] evaluated in %.1fs (%s weights): %s", step, result.duration, result.weights, shown)
        else:
            logger.error("[Step %d] evaluation failed (recorded, training continues): %s", step, result.error)
        return result

    def _open_sinks(self, tracker: BestCheckpointTracker) -> list[Any]:
        if self._sinks is None:
            context = {"filename_suffix": f".eval{os.getpid()}", "checkpoint_dir": str(tracker.dir),
                       "experiment_dir": str(self.samples_dir.parent if self.samples_dir is not None
                                             else Path(tracker.dir).parent)}
            self._sinks = make_sinks(self.sinks, context=context)
        return self._sinks

    def _log_to_sinks(self, tracker: BestCheckpointTracker, result: EvaluationResult, *, path: str | Path,
                      epoch: int | None, is_best: bool, error: str | None) -> None:
        """Send the recorded evaluation to every sink (guarded: a failing sink only logs a warning)."""
        images = evaluation_images(self.samples_dir, result.step) if self.samples_dir is not None else []
        event = EvaluationEvent(
            step=result.step, scores=dict(result.scores) if error is None else {}, epoch=epoch,
            intervals=dict(result.intervals) if error is None else {}, protocol_hash=result.protocol_hash,
            weights=None if result.weights == "unknown" else result.weights, is_best=is_best,
            images=images if error is None else [], error=error, path=str(path), preview=result.preview)
        for sink in self._open_sinks(tracker):
            sink.log_evaluation(event)
            if is_best:
                sink.log_best(result.step, str(path), dict(result.scores))

    def finish(self, tracker: BestCheckpointTracker) -> None:
        """End of the run for the sinks: the tracker's summary and ``best_checkpoint_results.json``.

        Called by whichever process owns the sinks (the background worker when training closes it, the inline
        writer rank, ``bestckpt evaluate``/``watch``). Does nothing when no sink is configured or opened."""
        if not self._sinks or not getattr(tracker, "is_writer", True):
            return
        from bestckpt.tracking import layout

        try:
            summary = tracker.summary()
        except Exception:
            logger.exception("could not build the summary for the sinks")
            return
        results = Path(tracker.dir) / layout.RESULTS_FILE
        for sink in self._sinks:
            sink.finish(summary, results if results.is_file() else None)

    def close(self) -> None:
        """Close the sinks that were opened."""
        for sink in self._sinks or []:
            sink.close()
        self._sinks = None
