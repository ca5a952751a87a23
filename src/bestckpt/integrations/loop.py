"""Plain training loop helper: tracker + schedule + runner in a few lines.

    from bestckpt.integrations.loop import TrainingEvaluation
    evaluation = TrainingEvaluation("runs/exp/checkpoints", Protocol.from_file("eval.json"),
                                    "my_project.sampling:make_sampler", mode="background")
    for step in ...:
        ...
        if step % ckpt_every == 0:
            path = save(model, f"runs/exp/checkpoints/{step:07d}.pt")  # write to a temp name, then rename
            evaluation.checkpoint_saved(step, path, epoch=epoch)
    evaluation.close()   # waits for queued evaluations, logs the summary, writes the results JSON

``mode``: ``"background"`` (default: a worker process, training is not blocked), ``"inline"``
(evaluate inside the training processes; call on every rank), or ``"off"`` (track and prune only).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bestckpt.runners import BackgroundRunner, EvalSchedule, Evaluator, InlineRunner

__all__ = ["MODES", "TrainingEvaluation"]

logger = logging.getLogger(__name__)

MODES = ("background", "inline", "off")


class TrainingEvaluation:
    """Owns the tracker and the runner for one training run."""

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
        schedule = schedule or EvalSchedule()
        experiment = Path(experiment_dir) if experiment_dir is not None else Path(checkpoint_dir).parent
        samples_dir = experiment / "evaluation_samples"
        if mode == "off":
            self.runner: Any = InlineRunner(tracker, Evaluator(protocol, sampler), EvalSchedule.off())
        elif mode == "background":
            if not isinstance(sampler, str):
                raise ValueError(
                    "mode='background' needs the sampler as a 'module:factory' string (it is rebuilt in the worker "
                    f"process), got {type(sampler).__name__}; or use mode='inline'"
                )
            self.runner = BackgroundRunner(tracker, protocol, sampler, schedule=schedule, device=device,
                                           samples_dir=samples_dir, tensorboard_dir=tensorboard_dir,
                                           weights_dir=weights_dir)
        else:
            if isinstance(sampler, str):
                from bestckpt.evaluation.sampler import load_sampler

                sampler = load_sampler(sampler)
            evaluator = Evaluator(protocol, sampler, device=device, samples_dir=samples_dir,
                                  tensorboard_dir=tensorboard_dir, weights_dir=weights_dir)
            self.runner = InlineRunner(tracker, evaluator, schedule)

    def checkpoint_saved(self, step: int, path: str | Path, epoch: int | None = None) -> Any:
        """Call right after the checkpoint of ``step`` is committed on disk."""
        return self.runner.checkpoint_saved(step, path, epoch=epoch)

    def close(self, wait: bool = True) -> None:
        """Finish (or leave pending, ``wait=False``) queued evaluations; log the summary; export results."""
        self.runner.close(wait=wait)
        if self.tracker.is_writer:
            self.tracker.log_summary()
            self.tracker.export_results()

    def __enter__(self) -> TrainingEvaluation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)
