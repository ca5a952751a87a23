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
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from bestckpt.tracking.rescoring import RESCORING
from bestckpt.tracking.state import Record, TrackerState

__all__ = ["FINAL", "final_of", "choice_time", "carried", "protected", "set_final"]

#: ``info`` key of finalize's marks
FINAL = "final"


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
    """Finalists of a finalize that runs (or was interrupted): kept until it finishes."""
    return {r.step: "finalist (bestckpt finalize running; rerun it to finish)"
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
