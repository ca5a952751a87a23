"""The :class:`~bestckpt.runners.Evaluator` of `bestckpt evaluate`/`finalize` under torchrun (imported only there).

Every rank enters the same collectives in the same order. When one of them fails (a peer died, a timeout), the
ranks are out of step: that is not the checkpoint's fault, so it must not be recorded as a failed evaluation (the
plain ``evaluate_and_record`` records any crash and goes on, and every later checkpoint would then "fail" too).
:class:`LockstepEvaluator` turns it into :class:`~bestckpt.cli.distributed.RanksLost`, which stops the command on
every rank; what was not recorded stays as it was, and running the command again resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bestckpt.cli.distributed import RanksLost
from bestckpt.runners.evaluator import Evaluator

if TYPE_CHECKING:
    from bestckpt.evaluation.evaluate import EvaluationResult

__all__ = ["LockstepEvaluator"]


class LockstepEvaluator(Evaluator):
    """An :class:`Evaluator` whose :meth:`evaluate` raises :class:`RanksLost` instead of any exception (it returns
    every failure of the evaluation itself as a result; what it raises is a lost collective, or a bug that leaves
    the ranks out of step just the same)."""

    def evaluate(self, step: int, path: str | Path) -> EvaluationResult:
        try:
            return super().evaluate(step, path)
        except Exception as exc:
            reason = (str(exc).splitlines() or [""])[0][:300]
            raise RanksLost(f"the ranks fell out of step while evaluating step {step} ({type(exc).__name__}: "
                            f"{reason}); nothing was recorded for it. See every rank's output for the cause, then "
                            "run the command again (it resumes)") from exc
