"""Where evaluation runs: inline (all ranks), a background worker process, or a sidecar watcher.

All three call the same :func:`~bestckpt.evaluation.evaluate.evaluate_checkpoint` on a committed
checkpoint and record through the tracker, so their scores are interchangeable:

* :class:`InlineRunner` evaluates inside the training processes; every rank takes part.
* :class:`BackgroundRunner` hands "checkpoint N saved" to a worker *process* and returns at once;
  the checkpoint stays pending (protected from pruning) until the worker records its score.
* :class:`SidecarWatcher` (``bestckpt watch``) evaluates complete checkpoints as they appear, in
  step order, skipping none; it resumes from the tracker's state after any crash.

Training never fails because evaluation failed: the failure is logged and recorded with
``tracker.record_failure`` (a failed record can never become best).

Modules, one role each: ``schedule`` (which checkpoints), ``evaluator`` (evaluate + record one
checkpoint), ``protocol_change`` (a resumed run under a changed protocol), ``records`` (tracker
look-ups), ``inline``, ``background`` + ``worker`` (the spawned process), ``sidecar``. Importing
this package stays light (no torch).
"""
from __future__ import annotations

from bestckpt.runners.background import BackgroundRunner
from bestckpt.runners.evaluator import Evaluator, build_scorer, default_device
from bestckpt.runners.inline import InlineRunner
from bestckpt.runners.protocol_change import (
    ON_PROTOCOL_CHANGE,
    ProtocolChangedError,
    reconcile_protocol,
)
from bestckpt.runners.schedule import EvalSchedule
from bestckpt.runners.sidecar import SidecarWatcher

__all__ = [
    "BackgroundRunner",
    "EvalSchedule",
    "Evaluator",
    "InlineRunner",
    "ON_PROTOCOL_CHANGE",
    "ProtocolChangedError",
    "SidecarWatcher",
    "build_scorer",
    "default_device",
    "reconcile_protocol",
]
