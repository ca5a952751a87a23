"""Bring a :class:`~bestckpt.tracking.state.TrackerState` up to date with the directory it describes.

- :func:`load`: reread the state if another process changed it (the snapshot's and journal's
  ``(mtime_ns, size, inode)`` tell; when only the journal grew, just its new lines are applied),
  move an unreadable snapshot or journal aside (never lose it) and rebuild from the checkpoints on
  disk;
- :func:`reconcile`: after a full reload, mark checkpoints deleted outside bestckpt as pruned and
  finish deletions a crash interrupted (:func:`finish_intents`, the writer only);
- :func:`rebuild_from_disk`, :func:`adopt_unregistered`, :func:`unknown_entries`,
  :func:`check_metric_change`: what the writer's start checks.

Entries are inspected and deleted through :mod:`bestckpt.tracking.entries`; the directory is
scanned by :func:`bestckpt.tracking.layout.step_entries`.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from bestckpt import errors
from bestckpt.tracking import aliasing, entries, layout, saveorder
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.state import Record, StateError, TrackerState

__all__ = ["load", "reconcile", "rebuild_from_disk", "adopt_unregistered", "drop_missing", "finish_intents",
           "scan", "unknown_entries", "check_metric_change"]

logger = logging.getLogger(__name__)


def load(st: TrackerState, config: TrackerConfig, is_writer: bool) -> None:
    """Reload ``st`` if another process changed the state since we last read or wrote it."""
    sf = st.sf
    stamp = sf.stamp()
    if stamp == st.stamp:
        return
    if stamp[0] is None:
        if st.stamp is not None and st.stamp[0] is not None:
            logger.warning("%s disappeared; rebuilding the state from the checkpoints on disk", st.path)
            st.set_records({})
            rebuild_from_disk(st, config)
        st.stamp = stamp
        return
    if st.stamp is not None and stamp[0] == st.stamp[0] and sf.journal_id is not None:
        try:
            entries = sf.read_journal(sf.journal_id, incremental=True)
        except ValueError:
            entries = None
        if entries is not None:
            for entry in entries:
                st.apply_entry(entry)
            st.stamp = stamp
            return
    snap = sf.read_snapshot()
    if snap is None:
        st.stamp = None
        return load(st, config, is_writer)
    try:
        data = st.parse(snap[0])
    except StateError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        _corrupt(st, config, is_writer, str(exc))
        return
    try:
        entries = sf.read_journal(data.get("journal_id"))
    except ValueError as exc:
        _journal_corrupt(st, config, is_writer, str(exc))
        entries = []
    for entry in entries or []:
        st.apply_entry(entry)
    st.stamp = stamp
    reconcile(st, is_writer)


def _journal_corrupt(st: TrackerState, config: TrackerConfig, is_writer: bool, why: str) -> None:
    """Keep the snapshot, move the unreadable journal aside, and re-adopt what is on disk."""
    journal = st.sf.journal_path
    if is_writer:
        aside = entries.move_aside(journal)
        logger.error("%s (%s); moved it to %s; checkpoints on disk that the state lost are re-adopted",
                     why, journal, aside.name)
    else:
        logger.error("%s; ignoring the journal", why)
    st.sf.torn = True
    st.force_full = True
    rebuild_from_disk(st, config)


def _corrupt(st: TrackerState, config: TrackerConfig, is_writer: bool, why: str) -> None:
    """Move an unreadable state aside (never lose it) and rebuild from the checkpoints on disk."""
    if is_writer:
        aside = entries.move_aside(st.path)
        logger.error("%s is unreadable (%s); moved it to %s and rebuilt the state from the checkpoints on disk",
                     st.path, why, aside.name)
    else:
        logger.error("%s is unreadable (%s); reading the checkpoints on disk instead", st.path, why)
    if is_writer and entries.entry_stat(st.dir, st.sf.journal_path.name) is not None:
        entries.move_aside(st.sf.journal_path)
    st.forget()
    rebuild_from_disk(st, config)


def scan(st: TrackerState, config: TrackerConfig) -> list[tuple[int, str]]:
    """``(step, name)`` of every entry of the directory named like a step checkpoint (empty if the
    directory cannot be listed: a reader must still see the state)."""
    try:
        return layout.step_entries(st.dir, config.step_from_name)
    except OSError:
        return []


def rebuild_from_disk(st: TrackerState, config: TrackerConfig) -> None:
    """Every step checkpoint on disk that the state does not know becomes a ``saved`` record,
    protected from pruning (its scores were lost: re-evaluate it or delete it by hand)."""
    adopted = 0
    for step, name in scan(st, config):
        if step in st.records and not st.records[step].pruned:
            continue
        stat = entries.entry_stat(st.dir, name)
        if stat is None:
            continue
        st.put(Record(step=step, epoch=None, path=name, metrics={}, status="saved", time=stat.st_mtime,
                      info={"recovered": "state lost; rebuilt from disk"}))
        adopted += 1
    if adopted:
        logger.warning("rebuilt %d checkpoint records from disk in %s", adopted, st.dir)


def adopt_unregistered(st: TrackerState, config: TrackerConfig) -> list[Record]:
    """Adopt, as ``pending``, the complete step checkpoints that the state does not know and whose
    step is greater than every recorded step: a process killed between writing a checkpoint and
    registering it. Newest first, one log line each; save order by step (the highest is the latest).

    Older unknown entries, incomplete ones (a DeepSpeed tag without its marker, not named by
    ``latest`` and with no later tag) and symlinks are left alone (:func:`unknown_entries` reports them).
    """
    top = max(st.records, default=-1)
    known = {r.path for r in st.records.values() if not r.pruned}
    try:
        found = layout.find_checkpoints(st.dir, config.step_from_name)
    except OSError:
        return []
    adopted = []
    for step, path, complete in found:  # ascending by step
        if not complete or step <= top or path.name in known or entries.entry_stat(st.dir, path.name) is None:
            continue
        adopted.append(Record(step=step, epoch=None, path=path.name, metrics={}, status="pending", time=time.time(),
                              info={"adopted": True}, seq=st.take_seq(), file_id=saveorder.file_id(st.dir, path.name)))
    for rec in reversed(adopted):
        st.put(rec)
        logger.warning("adopted %s: saved but never registered (the process stopped in between); pending evaluation",
                       rec.path)
    return adopted


def unknown_entries(st: TrackerState, config: TrackerConfig) -> list[str]:
    """Step-named entries on disk that no live record points at (left alone, reported)."""
    known = {r.path for r in st.records.values() if not r.pruned}
    return [name for _, name in scan(st, config) if name not in known]


def drop_missing(st: TrackerState, rec: Record) -> None:
    logger.warning("checkpoint %s (step %d) was deleted outside bestckpt; dropping it", rec.path, rec.step)
    st.put(dataclasses.replace(rec, pruned=True, info=dict(rec.info, removed="missing on disk")))


def reconcile(st: TrackerState, is_writer: bool) -> None:
    """After a reload: drop records whose checkpoint vanished, finish interrupted deletions
    (the writer only; readers just see the vanished ones as pruned)."""
    for rec in st.live():
        if entries.entry_stat(st.dir, rec.path) is None:
            drop_missing(st, rec)
    if st.intents and is_writer:
        finish_intents(st)


def finish_intents(st: TrackerState) -> None:
    """Carry out recorded deletions whose entry is still the one we decided to delete, and that no
    kept record refers to (:func:`~bestckpt.tracking.aliasing.kept_owner`; states written before
    paths were checked, or edited by hand, may hold two records sharing an entry)."""
    kept: dict[str, int] | None = None
    links: dict[str, str] = {}
    for intent in st.intents:
        rel = intent.get("path")
        if not isinstance(rel, str):
            continue
        try:
            entries.confine(st.dir, rel)
            step = intent.get("step")
            layout.check_not_own(rel, step if isinstance(step, int) else -1)
        except errors.UnsafePathError as exc:
            logger.error("refusing to delete %r: %s", rel, exc)
            continue
        stat = entries.entry_stat(st.dir, rel)
        if stat is None:
            continue
        if (stat.st_ino, stat.st_mtime_ns) != (intent.get("ino"), intent.get("mtime_ns")):
            logger.info("not deleting %s: it was replaced after the deletion was decided", rel)
            continue
        if kept is None:  # built afresh: a legacy state may list one path under two steps
            kept = {r.path: r.step for r in st.live()}
            links = aliasing.symlinked(st.dir, kept)
        owner = aliasing.kept_owner(st.dir, rel, kept, links)
        if owner is not None:
            logger.warning("not deleting %s (dropped step %s): it %s %s, the checkpoint of step %d, which is kept; "
                           "the entry stays on disk", rel, intent.get("step"), owner[2], owner[1], owner[0])
            continue
        try:
            entries.delete_entry(st.dir, rel)
            logger.info("deleted checkpoint %s (retention)", rel)
        except (OSError, errors.UnsafePathError) as exc:
            logger.error("could not delete checkpoint %s: %s", rel, exc)
    st.intents = []


def check_metric_change(st: TrackerState, config: TrackerConfig) -> None:
    """Re-rank by a new metric/direction from the stored metrics, or fail clearly if absent."""
    old_name = st.stored_config.get("metric_name")
    old_dir = st.stored_config.get("higher_is_better")
    name, higher = config.metric_name, config.higher_is_better
    if (old_name, old_dir) != (None, None) and (old_name, old_dir) != (name, higher):
        lacking = [r.step for r in st.live() if r.status == "evaluated" and r.metrics.get(name) is None]
        if lacking:
            raise StateError(
                f"{st.path} ranks by {old_name!r} (higher_is_better={old_dir}); re-ranking by "
                f"{name!r} is impossible: steps {lacking[:10]} have no {name!r} value. "
                f"Use metric_name={old_name!r}, or re-evaluate those checkpoints with {name!r}"
            )
        logger.info("re-ranking %s by %s (higher_is_better=%s), was %s (higher_is_better=%s)",
                    st.dir, name, higher, old_name, old_dir)
