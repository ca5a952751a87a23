"""Finalize's marks in the records: scores under a larger protocol, the pins of a running finalize,
and the finalized best, which outranks every ordinary score.

``bestckpt finalize`` (:mod:`bestckpt.runners.finalize`) re-scores the finalists under a larger protocol.
Those scores never replace a record's ``metrics``/``protocol_hash`` (the training protocol's, which the top-k
and :func:`~bestckpt.runners.protocol_change.reconcile_protocol` keep using); they go to
``info["final"]``::

    {"scores": {PROTOCOL_HASH: {"metrics": {...}, "intervals": {...}, "time": T}},
     "finalizing": T,   # while a finalize runs: protected from pruning (a finalist)
     "chosen": T}       # finalize chose this checkpoint (T: when)

How rankings under different protocols relate: scores are compared only within one protocol. The
training protocol ranks the top-k; the finalize protocol ranks the finalists; finalize's *decision*
(``chosen``) outranks both: while the chosen checkpoint is on disk, evaluated, and the same save, it is
the best, whatever later evaluations under the training protocol say (:func:`chosen_steps`, used by
:class:`~bestckpt.tracking.ranking.Ranking`). Only a later finalize (or a re-save of that step, which is
another checkpoint) changes it. Several chosen records (never written by finalize, which clears the
others) resolve to the most recent choice. A re-score of the same save keeps ``info["final"]``
(:func:`carried`).

A finalize that will not be rerun (changed mind, too expensive, weights gone) is abandoned with :func:`abandon`
(``bestckpt finalize DIR --abandon``): its ``finalizing`` pins go, the scores it measured and an earlier
``chosen`` stay. A running finalize holds :data:`LOCK_NAME` (:func:`running_lock`; flock: the kernel releases it
when the process ends, however it ends), so abandoning refuses while one runs, and so does a second finalize.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from bestckpt.errors import StateLockTimeout
from bestckpt.tracking.locking import DirectoryLock
from bestckpt.tracking.rescoring import RESCORING
from bestckpt.tracking.state import Record, TrackerState

__all__ = ["FINAL", "LOCK_NAME", "final_of", "choice_time", "carried", "protected", "set_final", "abandon",
           "running_lock"]

logger = logging.getLogger(__name__)

#: ``info`` key of finalize's marks
FINAL = "final"
#: held in the checkpoint directory while a finalize runs (a ``.bestckpt-`` name: never taken for a checkpoint)
LOCK_NAME = ".bestckpt-finalize.lock"
#: why :func:`running_lock` refuses: a second finalize, an abandon
_REFUSALS = ("wait for it to finish before starting another (two at once would undo each other's pins)",
             "its finalists stay pinned while it runs; wait for it to finish (that unpins them), or stop it (Ctrl-C) "
             "and then abandon it")


def final_of(rec: Record) -> dict[str, Any]:
    """``rec``'s finalize marks (a copy; empty if none or malformed)."""
    raw = rec.info.get(FINAL)
    return dict(raw) if isinstance(raw, dict) else {}


def choice_time(rec: Record) -> float | None:
    """When finalize chose ``rec`` (``None``: not chosen, or not a live record with a score: evaluated, or pending
    a re-score under a changed training protocol, which keeps its choice meanwhile)."""
    if rec.pruned or not (rec.status == "evaluated" or (rec.status == "pending" and RESCORING in rec.info)):
        return None
    value = final_of(rec).get("chosen")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def carried(old: Record | None, info: Mapping[str, Any], same_save: bool) -> dict[str, Any]:
    """A re-scored record's new ``info``, keeping the earlier record's finalize marks when it is the same save."""
    out = dict(info)
    if old is not None and same_save and not old.pruned and FINAL in old.info and FINAL not in out:
        out[FINAL] = old.info[FINAL]
    return out


def protected(st: TrackerState) -> dict[int, str]:
    """Finalists of a finalize that runs (or was interrupted): kept until it finishes or is abandoned (:func:`abandon`)."""
    return {r.step: "finalist of an unfinished finalize (rerun it, or `finalize --abandon`)"
            for r in st.live() if final_of(r).get("finalizing") is not None}


def set_final(st: TrackerState, entries: Mapping[int, Mapping[str, Any] | None]) -> None:
    """Replace the finalize marks of the live records of ``entries`` (``None`` or ``{}``: remove them).
    Steps that are not live are skipped (a checkpoint deleted meanwhile keeps its history as it was)."""
    for step, entry in entries.items():
        rec = st.records.get(step)
        if rec is None or rec.pruned or step not in st.live_steps:
            continue
        info = {k: v for k, v in rec.info.items() if k != FINAL}
        if entry:
            info[FINAL] = dict(entry)
        st.put(dataclasses.replace(rec, info=info))


def abandon(st: TrackerState, *, log: bool = True) -> list[int]:
    """Remove the ``finalizing`` pins of an interrupted finalize from the live records (retention then treats them
    like any other checkpoint); the scores it measured under its protocol stay (real measurements), and so does an
    earlier finalize's ``chosen``. Returns the released steps, sorted (empty: no pins); ``log``: one line each."""
    released = []
    for rec in sorted((r for r in st.live() if "finalizing" in final_of(r)), key=lambda r: r.step):
        marks = final_of(rec)
        if marks.pop("finalizing") is not None:
            released.append(rec.step)
        set_final(st, {rec.step: marks or None})
        scores = len(marks.get("scores") or {})
        if log:
            logger.info("finalize abandoned: step %d (%s) is no longer pinned as a finalist%s", rec.step, rec.path,
                        f"; its scores under {scores} finalize protocol(s) stay" if scores else "")
    return released


@contextlib.contextmanager
def running_lock(directory: str | Path, *, abandoning: bool = False) -> Iterator[None]:
    """Hold :data:`LOCK_NAME` in ``directory`` while a finalize runs (or, ``abandoning``, while its marks are
    removed); :class:`~bestckpt.errors.StateLockTimeout` at once, saying why and what to do, if a finalize holds it."""
    path = Path(directory) / LOCK_NAME
    lock = DirectoryLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StateLockTimeout(f"a bestckpt finalize is running on {directory} (it holds {path}): "
                               f"{_REFUSALS[abandoning]}") from None
    try:
        yield
    finally:
        lock.release()
