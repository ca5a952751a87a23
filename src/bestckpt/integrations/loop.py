"""Plain training loop helper: tracker + schedule + runner in a few lines.

    from bestckpt.integrations.loop import TrainingEvaluation
    evaluation = TrainingEvaluation("runs/exp/checkpoints", Protocol.from_file("eval.json"),
                                    "my_project.sampling:make_sampler", mode="background")
    for step in ...:
        ...
        if step % ckpt_every == 0:
            path = save(model, f"runs/exp/checkpoints/{step:07d}.pt")  # write to a temp name, then rename
            evaluation.checkpoint_saved(step, path, epoch=epoch)
        evaluation.poll()   # optional: deliver arrived results to on_result now
    evaluation.close()   # waits for queued evaluations, logs the summary, writes the results JSON

``mode``: ``"background"`` (default: a worker process, training is not blocked), ``"inline"``
(evaluate inside the training processes; call on every rank), or ``"off"`` (track and prune only).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestckpt.runners import BackgroundRunner, EvalSchedule, Evaluator, InlineRunner

__all__ = ["MODES", "EvaluationOutcome", "TrainingEvaluation", "best_when_recorded"]

logger = logging.getLogger(__name__)

MODES = ("background", "inline", "off")


@dataclass(frozen=True)
class EvaluationOutcome:
    """One evaluation as the training process learns of it (what ``on_result`` receives).

    ``scores``: metric name -> value (empty when the evaluation failed); ``error``: why it failed,
    else None; ``new_best``: whether this checkpoint was the best when its result was recorded
    (a later checkpoint may already have replaced it by the time the result reaches training).
    """

    step: int
    scores: Mapping[str, float | None] = field(default_factory=dict)
    error: str | None = None
    new_best: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def best_when_recorded(tracker: Any, step: int) -> bool:
    """Whether ``step``'s evaluation made it the best checkpoint at the moment it was recorded.

    Results reach the training process a little after the worker records them, so "best now" may
    already name a later step: replay the tracker's best-selection rule on the records made up to
    that moment instead (ties keep the earlier step; ``min_improvement`` and ``best_beyond_noise`` apply).
    """
    from bestckpt.tracking.policies import Candidate, interval_from_info, select_best

    name = tracker.metric_name
    records = tracker.records  # one consistent snapshot (reloaded under the tracker's lock)
    mine = next((r for r in records if r.step == step), None)
    if mine is None or mine.score(name) is None:
        return False
    earlier = [Candidate(r.step, r.path, r.status, r.score(name), r.time, interval=interval_from_info(r.info, name))
               for r in records if r.score(name) is not None and r.time <= mine.time]
    best = select_best(earlier, tracker.higher_is_better, tracker.config.min_improvement,
                       beyond_noise=tracker.config.best_beyond_noise)
    return best is not None and best.step == step


def _log_outcome(outcome: EvaluationOutcome, tracker: Any) -> None:
    """The guide's result lines, in the training process (the worker's own go to its log file)."""
    if not outcome.ok:
        logger.error("[Step %d] evaluation failed (recorded; training goes on): %s", outcome.step, outcome.error)
        return
    shown = ", ".join(f"{k}: {v:.4f}" for k, v in outcome.scores.items() if v is not None and not k.endswith("_std"))
    logger.info("[Step %d] evaluated in %.1fs: %s", outcome.step, outcome.duration, shown)
    if outcome.new_best:
        logger.info("🏆 New best checkpoint! Score: %.4f", outcome.scores[tracker.metric_name])


def _make_runner(mode: str, tracker: Any, protocol: Any, sampler: Any, schedule: EvalSchedule,
                 options: dict[str, Any]) -> Any:
    """The runner of ``mode`` (see :data:`MODES`); ``options`` are TrainingEvaluation's pass-through keywords."""
    if mode == "off":
        return InlineRunner(tracker, Evaluator(protocol, sampler), EvalSchedule.off())
    if mode == "background":
        if not isinstance(sampler, str):
            raise ValueError(
                "mode='background' needs the sampler as a 'module:factory' string (it is rebuilt in the worker "
                f"process), got {type(sampler).__name__}; or use mode='inline'"
            )
        return BackgroundRunner(tracker, protocol, sampler, schedule=schedule, **options)
    from bestckpt.evaluation.sampler import load_factory, load_sampler

    if isinstance(sampler, str):
        sampler = load_sampler(sampler)
    scorer_spec = options.pop("scorer_spec")
    for name in ("worker_threads", "log_file"):  # the worker's, not inline evaluation's
        options.pop(name)
    evaluator = Evaluator(protocol, sampler, scorer=load_factory(scorer_spec) if scorer_spec else None, **options)
    return InlineRunner(tracker, evaluator, schedule)


class TrainingEvaluation:
    """Owns the tracker and the runner for one training run.

    ``on_result(EvaluationOutcome)`` is called in the training process once for every evaluation
    result: in ``"background"`` mode when it has arrived (delivered by :meth:`checkpoint_saved`,
    :meth:`poll` and :meth:`close`), in ``"inline"`` mode right after the evaluation (on the writer
    rank only). In ``"background"`` mode, checkpoints an earlier (interrupted) run left pending
    are queued again on construction (``resume_pending=False`` leaves them to ``bestckpt
    evaluate``/``watch``); ``log_file`` sends the worker's log there, and this process then logs
    the guide's result lines itself. ``worker_threads`` is the worker's torch thread count;
    ``cache_dir`` holds reference statistics; ``batch_size`` bounds sampling batches;
    ``scorer_spec`` (``"module:factory"``) replaces the protocol's default scorer. ``sinks`` chooses where
    evaluations are also logged (:class:`~bestckpt.sinks.base.SinkSpec`: ``["mlflow"]``,
    ``{"mlflow": {"tracking_uri": ..., "run_id": ...}}``; ``docs/sinks.md``); they are written by the process that
    records the evaluation (the worker in ``"background"`` mode, the writer rank in ``"inline"`` mode).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        protocol: Any,
        sampler: Any,
        *,
        mode: str = "background",
        schedule: EvalSchedule | None = None,
        device: str | None = None,
        experiment_dir: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        weights_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 16,
        worker_threads: int | None = 1,
        log_file: str | Path | None = None,
        scorer_spec: str | None = None,
        on_result: Callable[[EvaluationOutcome], Any] | None = None,
        resume_pending: bool = True,
        sinks: Any = None,
        tracker: Any = None,
        **tracker_kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if tracker is None:
            from bestckpt.tracking.tracker import BestCheckpointTracker

            tracker = BestCheckpointTracker(checkpoint_dir, **tracker_kwargs)
        self.tracker = tracker
        self.mode = mode
        self.on_result = on_result
        self.results: list[EvaluationOutcome] = []  # every outcome delivered so far, in arrival order
        self._echo = mode == "background" and log_file is not None  # worker logs to a file: echo results
        self._seen = 0  # how many of the background runner's results were delivered
        schedule = schedule or EvalSchedule()
        experiment = Path(experiment_dir) if experiment_dir is not None else Path(checkpoint_dir).parent
        # read before the runner starts: a changed protocol's re-scoring also marks steps pending (and queues them)
        left = tracker.pending_steps() if mode == "background" and resume_pending and schedule.enabled else []
        self.runner = _make_runner(mode, tracker, protocol, sampler, schedule, dict(
            device=device, samples_dir=experiment / "evaluation_samples", tensorboard_dir=tensorboard_dir,
            weights_dir=weights_dir, cache_dir=cache_dir, batch_size=batch_size, worker_threads=worker_threads,
            log_file=log_file, scorer_spec=scorer_spec, sinks=sinks))
        if left:
            for step in self.runner.resume_pending(only=set(left)):
                logger.info("[Step %d] Evaluating model performance at step %d (left pending by an earlier run)",
                            step, step)

    def checkpoint_saved(self, step: int, path: str | Path, epoch: int | None = None) -> Any:
        """Call right after the checkpoint of ``step`` is committed on disk.

        Returns the runner's answer: whether it was queued (``"background"``), the
        :class:`~bestckpt.evaluation.evaluate.EvaluationResult` or None (``"inline"``), None (``"off"``).
        """
        answer = self.runner.checkpoint_saved(step, path, epoch=epoch)
        if self.mode == "background":
            if answer:
                logger.info("[Step %d] Evaluating model performance at step %d", step, step)
            self.poll()
        elif self.mode == "inline" and answer is not None and getattr(self.tracker, "is_writer", True):
            self._deliver(EvaluationOutcome(answer.step, dict(answer.scores), answer.error,
                                            answer.ok and best_when_recorded(self.tracker, answer.step),
                                            answer.duration))
        return answer

    def poll(self, timeout: float = 0.0) -> list[EvaluationOutcome]:
        """Deliver the background results that arrived since the last call; returns them.

        Non-blocking by default; ``timeout > 0`` first waits up to that many seconds for a result."""
        if self.mode != "background":
            return []
        if not self.runner.closed:
            self.runner.poll(timeout)  # moves arrived results into runner.completed
        new, self._seen = self.runner.completed[self._seen:], len(self.runner.completed)
        delivered = []
        for res in new:
            if res.get("skipped"):  # already scored when the worker reached it: nothing happened
                continue
            ok = bool(res.get("ok"))
            outcome = EvaluationOutcome(res["step"], dict(res.get("scores") or {}),
                                        None if ok else str(res.get("error")),
                                        ok and best_when_recorded(self.tracker, res["step"]),
                                        float(res.get("duration") or 0.0))
            self._deliver(outcome)
            delivered.append(outcome)
        return delivered

    def _deliver(self, outcome: EvaluationOutcome) -> None:
        self.results.append(outcome)
        if self._echo:
            _log_outcome(outcome, self.tracker)
        if self.on_result is not None:
            self.on_result(outcome)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) until every queued evaluation has its result, delivering them; the worker
        keeps running. True when none is left. Then the best is final: measure more about it, attach that with
        ``tracker.annotate(step, name, value)`` and :meth:`close`: the sinks get it with the summary."""
        done = self.runner.wait(timeout) if self.mode == "background" else True
        self.poll()
        return bool(done)

    def close(self, wait: bool = True) -> None:
        """Finish (or leave pending, ``wait=False``) queued evaluations; log the summary; export results."""
        self.runner.close(wait=wait)
        self.poll()  # results that arrived while the worker finished
        if self.tracker.is_writer:
            self.tracker.log_summary()
            self.tracker.write_results()

    def __enter__(self) -> TrainingEvaluation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)
