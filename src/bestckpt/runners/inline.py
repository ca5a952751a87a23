"""Evaluate inside the training processes: :class:`InlineRunner` (every rank takes part)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bestckpt.runners.evaluator import Evaluator
from bestckpt.runners.protocol_change import reconcile_protocol
from bestckpt.runners.records import record_of
from bestckpt.runners.schedule import EvalSchedule

if TYPE_CHECKING:
    from bestckpt.evaluation.evaluate import EvaluationResult
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["InlineRunner"]


class InlineRunner:
    """Evaluate inside the training processes; call :meth:`checkpoint_saved` on *every* rank."""

    def __init__(self, tracker: BestCheckpointTracker, evaluator: Evaluator, schedule: EvalSchedule | None = None, *,
                 on_protocol_change: str = "refuse") -> None:
        self.tracker = tracker
        self.evaluator = evaluator
        self.schedule = schedule or EvalSchedule()
        self._count = 0
        self._rescore: list[int] = []
        if self.schedule.enabled:
            self._rescore = reconcile_protocol(tracker, evaluator.protocol, on_protocol_change)

    def _rescore_stale(self) -> None:
        steps, self._rescore = self._rescore, []
        for step in steps:
            rec = record_of(self.tracker, step)
            name = rec.path if rec else self.tracker.config.step_filename(step)
            path = Path(self.tracker.config.checkpoint_dir) / name
            self.evaluator.evaluate_and_record(self.tracker, step, path, None if rec is None else rec.epoch)

    def checkpoint_saved(self, step: int, path: str | Path, epoch: int | None = None) -> EvaluationResult | None:
        """Register the committed checkpoint; evaluate it now if the schedule says so (then return the result)."""
        if self._rescore:
            self._rescore_stale()
        self._count += 1
        evaluate = self.schedule.should_evaluate(step, self._count)
        self.tracker.checkpoint_saved(step, str(path), epoch=epoch, evaluate=evaluate)
        if not evaluate:
            return None
        return self.evaluator.evaluate_and_record(self.tracker, step, path, epoch)

    def wait(self, timeout: float | None = None) -> bool:
        """Nothing is ever queued inline (each evaluation ran in ``checkpoint_saved``): True."""
        return True

    def close(self, wait: bool = True) -> None:
        """Finish and release the evaluator's sinks (``wait`` exists for symmetry with the background runner).

        After an interrupted evaluation too (a Ctrl-C inside :meth:`checkpoint_saved` records nothing: the step
        stays ``pending``): the sinks get the summary naming the pending steps and end their own runs."""
        self.evaluator.finish(self.tracker)
        self.evaluator.close()
