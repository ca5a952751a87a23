"""The save order of a checkpoint directory: which checkpoint is the latest, i.e. the resume point.

"Latest" means the most recently *saved* checkpoint, not the highest step. A run restarted from step
0 in a directory that holds steps 1000 and 2000, a framework resuming from ``checkpoint-N`` below the
highest step, or one bogus huge step would otherwise leave the new run's newest checkpoint
unprotected. Every record carries ``seq``, a per-directory save counter (the state header keeps
``next_seq``), and :class:`~bestckpt.tracking.policies.LatestN` keeps the records with the highest
``(seq, step)``; records of states written before the counter existed have ``seq`` 0 and so fall back
to step order.

A call about a step gets a new ``seq`` when it describes a new save: the step has no live record,
or the record names another path, or the checkpoint file changed since it was registered (its
``(mtime_ns, size)``, kept in ``Record.file_id``, differ: a restarted run wrote the step again).
Registering or scoring the same checkpoint again (a resumed run re-queueing its pending steps, a
protocol change re-scoring old ones, a late evaluation) keeps its ``seq``. A directory (DeepSpeed
tag) is identified by its entries' newest time and total size; records of older states, which have
no ``file_id``, are compared by path only. File times are compared for equality only, never ordered (clocks
differ between machines and may step back); a directory copied without its file times (``cp -r``)
is recognised at the writer's start (:func:`restamp_if_copied`), so its checkpoints do not all look
re-saved. A checkpoint saved again by a process that stopped before registering it takes its place in
the save order at the next writer's start (:func:`order_resaves`), not at the next call about it: that
call may come after newer saves were registered (a late evaluation), and would then make it look newer
than them and demote the real newest save, the resume point, out of keep-latest.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat as stat_mod
from typing import Any

from bestckpt.tracking.state import Record, TrackerState

__all__ = ["file_id", "same_checkpoint", "order", "fields", "restamp_if_copied", "order_resaves"]

logger = logging.getLogger(__name__)


def file_id(root: os.PathLike[str] | str, rel: str) -> tuple[int, int] | None:
    """What tells a re-save from a re-registration: ``(mtime_ns, size)`` of the regular file ``rel`` in
    ``root``; for a checkpoint directory (a DeepSpeed tag, saved again in place by a restarted run) the
    newest ``mtime_ns`` and the total size of its direct entries; ``None`` for anything else."""
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
        if stat_mod.S_ISREG(st.st_mode):
            return (st.st_mtime_ns, st.st_size)
        if not stat_mod.S_ISDIR(st.st_mode):
            return None
        newest, total = st.st_mtime_ns, 0
        with os.scandir(path) as it:
            for entry in it:
                est = entry.stat(follow_symlinks=False)
                newest = max(newest, est.st_mtime_ns)
                total += est.st_size if stat_mod.S_ISREG(est.st_mode) else 0
        return (newest, total)
    except OSError:
        return None


def same_checkpoint(old: Record, rel: str, fid: tuple[int, int] | None) -> bool:
    """Whether a call naming ``rel`` (whose file is ``fid`` now) is about the checkpoint ``old`` describes."""
    if old.pruned or old.path != rel:
        return False
    return old.file_id is None or fid is None or old.file_id == fid


def order(st: TrackerState, step: int, rel: str, *, warn: bool = True) -> tuple[int, tuple[int, int] | None]:
    """``(seq, file_id)`` for the record of ``step`` at ``rel`` that a call is about to put.

    The same checkpoint keeps its ``seq``; a new save takes the next one, with a warning (if ``warn``:
    the writer's, not every rank's) when its step is below the previous save's (a resumed or
    restarted run).
    """
    fid = file_id(st.dir, rel)
    old = st.records.get(step)
    if old is not None and same_checkpoint(old, rel, fid):
        return old.seq, fid
    previous = st.newest
    if warn and previous is not None and step < previous[1]:
        logger.warning("step went back from %d to %d (a resumed or restarted run): %d is now the resume point",
                       previous[1], step, step)
    return st.take_seq(), fid


def fields(st: TrackerState, step: int, rel: str, warn: bool) -> dict[str, Any]:
    """:func:`order` as ``Record`` keyword arguments (``seq=..., file_id=...``)."""
    seq, fid = order(st, step, rel, warn=warn)
    return {"seq": seq, "file_id": fid}


def restamp_if_copied(st: TrackerState) -> int:
    """At the writer's start: if the latest save's file is no longer the one registered (the directory
    was copied or restored without its file times), take every live record's current ``file_id`` as
    its own, so that registering or scoring them again is not mistaken for a re-save. Returns how
    many records were re-stamped (normally 0, after one ``lstat``)."""
    stamped = [r for r in st.live() if r.file_id is not None]
    if not stamped:
        return 0
    latest = max(stamped, key=lambda r: (r.seq, r.step))
    if file_id(st.dir, latest.path) in (latest.file_id, None):
        return 0
    count = 0
    for rec in stamped:
        fid = file_id(st.dir, rec.path)
        if fid is not None and fid != rec.file_id:
            st.put(dataclasses.replace(rec, file_id=fid))
            count += 1
    logger.info("the files of %d checkpoints in %s changed times since they were registered (a copy that did not "
                "keep them?); their current times are taken as the registered ones", count, st.dir)
    return count


def order_resaves(st: TrackerState) -> list[int]:
    """At the writer's start, after :func:`restamp_if_copied`: every live checkpoint whose file changed since
    it was registered (a restarted run saved the step again and stopped before registering it) takes the
    next ``seq`` now, oldest first. The re-save happened before this start, so every checkpoint registered
    from now on is newer than it; the next call about it then finds the same file and keeps that ``seq``.
    Returns their steps."""
    changed = []
    for rec in sorted(st.live(), key=lambda r: (r.seq, r.step)):
        fid = file_id(st.dir, rec.path) if rec.file_id is not None else None
        if fid is not None and fid != rec.file_id:
            changed.append((rec, fid))
    for rec, fid in changed:
        st.put(dataclasses.replace(rec, seq=st.take_seq(), file_id=fid))
        logger.warning("%s changed since it was registered (saved again, then the process stopped before registering "
                       "it): it counts as saved after every checkpoint registered so far", rec.path)
    return [rec.step for rec, _ in changed]
