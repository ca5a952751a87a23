"""`BestCheckpointTracker`: the guide's tracker, made crash-safe and shareable between processes.

Every public call takes the directory's file lock, reloads ``best_checkpoints.json`` if another
process changed it (its ``(mtime_ns, size, inode)`` tells), mutates, writes the state atomically,
then points ``best.pt`` at the best checkpoint atomically, then deletes what retention dropped.
Deletions are recorded in the state (``deleting`` intents, records marked ``pruned``) *before*
anything is removed, so a crash mid-delete is finished on the next start. A crash between the
state write and the ``best.pt`` swap leaves ``best.pt`` on the previous best (still on disk, since
deletions come after the swap) with a ``best_link`` marker in the state; the next call repairs it.

Large states: past ``state_compact_bytes`` (256 KiB) each call appends one fsynced line to
``best_checkpoints.journal``; the snapshot is rewritten when the journal reaches a quarter of its size and at
every start. Read it with :func:`bestckpt.tracking.journal.read_state` or ``bestckpt status --json``.
A tracker object may be shared by threads (an in-process lock serialises its calls).

Documented choices:
- A checkpoint is ranked only when evaluated with a finite tracked metric; NaN, inf, a missing
  metric or :meth:`record_failure` give a ``failed`` record that is never best and never raises,
  unless the checkpoint already has a valid score: that score is kept (:mod:`~bestckpt.tracking.rescoring`).
- Values that would not survive a reload (a float epoch, a string score, ``info`` that is not JSON)
  are refused at the call (:mod:`~bestckpt.tracking.values`); so is a path another live step's
  checkpoint is, contains or lies in, or one of our own files (:mod:`~bestckpt.tracking.aliasing`).
- Ties: the earlier step stays ahead. With ``min_improvement > 0`` the best is the incumbent, in
  step order, that no later checkpoint beat by more than ``min_improvement``.
- Duplicate step: the new call replaces the record (re-scoring, or a re-saved checkpoint), logged.
- Decreasing steps are allowed (out-of-order evaluation, a resumed or restarted run); "latest"
  means the most recently saved checkpoint, not the highest step (:mod:`~bestckpt.tracking.saveorder`).
- Records of pruned checkpoints stay in the state (``pruned: true``) as the run's history; a
  checkpoint deleted by hand is marked pruned with a warning and never resurrected.
- Only the writer writes (global rank 0 under ``torch.distributed``, :mod:`bestckpt.tracking.roles`);
  other ranks read the state and compute the same answers in memory.

Layout: this module orchestrates (API, locks, transactions); :mod:`.startup` opens the directory,
:mod:`.commit` commits (retention, state, ``best.pt``, deletions), :mod:`.reconcile` reloads and reconciles,
:mod:`.ranking` ranks, :mod:`.state` holds the records, :mod:`.results` writes the results JSON.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import filelock

from bestckpt import errors
from bestckpt.tracking import (
    attached,
    commit,
    finalized,
    journal,
    layout,
    locking,
    pending,
    reconcile,
    saveorder,
    settings,
    startup,
)
from bestckpt.tracking.aliasing import check_new_path
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.console import format_score, format_summary
from bestckpt.tracking.guide_api import GuideAPI
from bestckpt.tracking.policies import Decision
from bestckpt.tracking.ranking import Ranking
from bestckpt.tracking.rescoring import failed_again, pending_again
from bestckpt.tracking.results import ResultsFile, summary_of
from bestckpt.tracking.roles import default_is_writer
from bestckpt.tracking.settings import NOT_PASSED
from bestckpt.tracking.state import (
    HEADER_TOP,
    STATE_SCHEMA,
    Record,
    StateError,
    TrackerState,
    check_step,
    clean_metrics,
)
from bestckpt.tracking.values import check_epoch, check_info, check_text

__all__ = ["BestCheckpointTracker", "Record", "StateError", "STATE_SCHEMA"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: errors that mean "this directory cannot be written": reported with the fix, not as a bare OSError
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


class BestCheckpointTracker(GuideAPI):
    """Rank evaluated checkpoints, keep the right ones, point ``best.pt`` at the best.

    Settings as in :class:`~bestckpt.tracking.config.TrackerConfig` (a setting not passed comes from the
    directory's stored config, :mod:`~bestckpt.tracking.settings`; ``config=`` shares one object, all its settings
    passed). The guide's methods (``get_best_score``, ``export_results``...) come from :class:`.guide_api.GuideAPI`.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        metric_name: str = NOT_PASSED,
        higher_is_better: bool = NOT_PASSED,
        save_top_k: int = NOT_PASSED,
        *,
        keep_latest: int = NOT_PASSED,
        keep_every_n_steps: int | None = NOT_PASSED,
        pinned_steps: tuple[int, ...] | list[int] = NOT_PASSED,
        min_improvement: float = NOT_PASSED,
        filename_template: str = NOT_PASSED,
        pending_stale_after: float | None = NOT_PASSED,
        best_beyond_noise: bool = NOT_PASSED,
        dry_run: bool = False,
        reconfigure: bool = False,
        is_writer: bool | None = None,
        config: TrackerConfig | None = None,
        lock_timeout: float = 600.0,
        state_compact_bytes: int = 256 * 1024,
    ) -> None:
        if config is None:
            if checkpoint_dir is None:
                raise TypeError("BestCheckpointTracker needs checkpoint_dir (or config=TrackerConfig(...))")
            passed: dict[str, Any] = dict(metric_name=metric_name, higher_is_better=higher_is_better, save_top_k=save_top_k,
                          keep_latest=keep_latest, keep_every_n_steps=keep_every_n_steps, pinned_steps=pinned_steps,
                          min_improvement=min_improvement, filename_template=filename_template,
                          pending_stale_after=pending_stale_after, dry_run=dry_run, best_beyond_noise=best_beyond_noise)
            given = {k: v for k, v in passed.items() if v is not NOT_PASSED}
            config = TrackerConfig(checkpoint_dir=cast(Path, checkpoint_dir), **given)  # validates what was passed
        elif not isinstance(config, TrackerConfig):
            raise TypeError(f"config must be a TrackerConfig, got {type(config).__name__}")
        else:
            given = config.to_dict()  # a whole config: every setting is explicit
        self.config = config
        self.is_writer = default_is_writer() if is_writer is None else bool(is_writer)
        self.dir = config.checkpoint_dir
        self._st = TrackerState(self.dir, journal.StateFile(self.dir, compact_bytes=state_compact_bytes))
        self._rank = Ranking(self._st, config)  # incremental: a call re-ranks only what it changed
        self._seen_stored: dict[str, Any] = {}  # the stored config as last compared with ours
        self._results = ResultsFile(self.dir, cache_limit=4 * HEADER_TOP)
        self._lock = None
        self._tlock = threading.RLock()
        if self.is_writer:
            startup.prepare_directory(self.dir)
            self._lock = locking.lock(self.dir, timeout=lock_timeout)
            try:
                with self._locked():
                    reconcile.load(self._st, self.config, True)
                    changes = self._settle(given, reconfigure)
                    startup.start(self._st, self._rank, self.config)
                if changes:
                    logger.warning("reconfigured %s on purpose (reconfigure=True): %s", self.dir,
                                   "; ".join(str(c) for c in changes))
            except OSError as exc:
                if exc.errno not in _UNWRITABLE:
                    raise
                raise type(exc)(exc.errno, f"checkpoint_dir {self.dir} is not usable for writing ({exc}); "
                                "fix its permissions/free space, or pass is_writer=False to only read") from exc
        else:
            reconcile.load(self._st, self.config, False)
            self._settle(given, reconfigure)
            reconcile.check_metric_change(self._st, self.config)

    @classmethod
    def open(cls, checkpoint_dir: str | Path, *, is_writer: bool = False, **overrides: Any) -> BestCheckpointTracker:
        """A tracker configured as the directory's state says (defaults where it says nothing); read-only
        unless ``is_writer``: what ``bestckpt status`` uses. ``overrides`` are settings passed explicitly
        (``None``: not passed), refused when they differ from the stored ones unless ``reconfigure=True``."""
        return cls(checkpoint_dir, is_writer=is_writer, **{k: v for k, v in overrides.items() if v is not None})

    def _settle(self, given: dict[str, Any], reconfigure: bool) -> list[settings.Change]:
        """Use the stored settings where none was given (:func:`~bestckpt.tracking.settings.resolve`)."""
        config, changes = settings.resolve(self.dir, self._st.path, self._st.stored_config, given,
                                           reconfigure=bool(reconfigure))
        self._use(config)
        return changes

    def _use(self, config: TrackerConfig) -> None:
        self._seen_stored = dict(self._st.stored_config)
        if config != self.config:
            self.config = config
            self._rank = Ranking(self._st, config)

    # ------------------------------------------------------------------ public API
    @property
    def metric_name(self) -> str:
        return self.config.metric_name

    @property
    def higher_is_better(self) -> bool:
        return self.config.higher_is_better

    @property
    def save_top_k(self) -> int:
        return self.config.save_top_k

    @property
    def stored_config(self) -> dict[str, Any]:
        """The ``tracker_config`` in the directory's state as last read or written (a copy; empty if none)."""
        return dict(self._st.stored_config)

    def checkpoint_saved(self, step: int, path: str | Path | None = None, epoch: int | None = None,
                         evaluate: bool = True) -> None:
        """Say that step ``step``'s checkpoint is committed on disk; ``pending`` (protected from
        pruning until scored) if ``evaluate`` else ``saved`` (prunable like any unevaluated checkpoint)."""
        step, epoch = check_step(step), check_epoch(epoch)

        def mutate() -> None:
            rel = self._checked_path(step, path, epoch)
            old = self._st.records.get(step)
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d saved again: its earlier %s record is replaced", step, old.status)
            self._st.put(Record(step=step, epoch=epoch, path=rel, metrics={}, status="pending" if evaluate else "saved",
                             time=time.time(), **saveorder.fields(self._st, step, rel, self.is_writer)))

        self._transaction(mutate)

    def update_checkpoint(self, step: int, epoch: int | None, checkpoint_path: str | Path | None,
                          metrics: Mapping[str, Any] | None, *, protocol_hash: str | None = None,
                          info: Mapping[str, Any] | None = None) -> bool:
        """Record step ``step``'s scores; returns whether it is now the best checkpoint.

        A missing, NaN or infinite tracked metric gives a ``failed`` record (logged, never best,
        no exception), or keeps the earlier valid score of a re-scored checkpoint. A path outside
        ``checkpoint_dir``, shared with another step, or a checkpoint missing on disk raises; so do
        values that would not survive a reload (:mod:`~bestckpt.tracking.values`).
        """
        step, epoch, info = check_step(step), check_epoch(epoch), check_info(info)
        protocol_hash = check_text("protocol_hash", protocol_hash)
        clean, error = clean_metrics(metrics, self.metric_name)
        before: list[int | None] = [None]

        def mutate() -> bool:
            rel = self._checked_path(step, checkpoint_path, epoch)
            before[0] = self._rank.best_step()
            old = self._st.records.get(step)
            if error and failed_again(self._st, old, error, protocol_hash, self.metric_name):
                return True
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d re-scored: the new scores replace the earlier ones", step)
            prev_epoch = old.epoch if old is not None and not old.pruned else None
            best_now = self._st.records.get(before[0]) if before[0] is not None else None
            if (protocol_hash is not None and best_now is not None and best_now.protocol_hash is not None
                    and best_now.protocol_hash != protocol_hash):
                logger.warning("step %d was evaluated with protocol %s, the current best (step %d) with %s: "
                               "their scores are not comparable; re-evaluate with one protocol", step,
                               protocol_hash, best_now.step, best_now.protocol_hash)
            order = saveorder.fields(self._st, step, rel, self.is_writer)  # finalize's marks stay with the save
            self._st.put(Record(
                step=step, epoch=epoch if epoch is not None else prev_epoch, path=rel, metrics=clean,
                status="failed" if error else "evaluated", time=time.time(), protocol_hash=protocol_hash,
                error=error, info=finalized.carried(old, info, old is not None and old.seq == order["seq"]), **order,
            ))
            if error:
                logger.warning("step %d: evaluation recorded as failed (%s); it will never be best", step, error)
            return True

        with self._tlock:  # the answer must describe this call's commit, not another thread's
            self._transaction(mutate)
            best = self._rank.best_step()
            if best == step and before[0] != step and self.is_writer:  # one log line per run, not per rank
                logger.info("🏆 New best checkpoint! Score: %s",
                            format_score(self._st.records[step].score(self.metric_name)))
        return best == step

    def record_failure(self, step: int, error: str, *, epoch: int | None = None,
                       checkpoint_path: str | Path | None = None, protocol_hash: str | None = None) -> None:
        """Record that evaluating step ``step`` failed (``error`` says why): never best, prunable.
        A checkpoint that has a valid score keeps it (:mod:`~bestckpt.tracking.rescoring`)."""
        step, epoch = check_step(step), check_epoch(epoch)
        protocol_hash = check_text("protocol_hash", protocol_hash)

        def mutate() -> None:
            old = self._st.records.get(step)
            path = checkpoint_path if checkpoint_path is not None else (old.path if old and not old.pruned else None)
            rel = self._checked_path(step, path, epoch)
            if failed_again(self._st, old, str(error), protocol_hash, self.metric_name):
                return
            self._st.put(Record(step=step, epoch=epoch if epoch is not None else (old.epoch if old else None),
                             path=rel, metrics=dict(old.metrics) if old else {}, status="failed", time=time.time(),
                             protocol_hash=protocol_hash, error=str(error),
                             **saveorder.fields(self._st, step, rel, self.is_writer)))
            logger.warning("step %d: evaluation failed (%s); it will never be best", step, error)

        self._transaction(mutate)

    def mark_for_rescoring(self, step: int) -> None:
        """Protect the scored checkpoint ``step`` as ``pending`` until it is scored again (e.g. under a new
        protocol); if that fails, its earlier score comes back (:mod:`~bestckpt.tracking.rescoring`)."""
        step = check_step(step)
        self._transaction(lambda: self._st.put(pending_again(self._st.records.get(step), step)))

    def set_final(self, entries: Mapping[int, Mapping[str, Any] | None]) -> None:
        """Replace finalize's marks (``info["final"]``) of these live steps at once (:mod:`.finalized`)."""
        self._transaction(lambda: finalized.set_final(self._st, {check_step(s): e for s, e in entries.items()}))

    def abandon_finalize(self) -> list[int]:
        """Unpin an interrupted finalize's finalists, keeping scores and choice (:func:`.finalized.abandon`; reader: preview)."""
        with finalized.running_lock(self.dir, abandoning=True) if self.is_writer else contextlib.nullcontext():
            return self._transaction(lambda: finalized.abandon(self._st, log=self.is_writer))

    def annotate(self, step: int, name: str, value: Any) -> None:
        """Attach a result measured after scoring (JSON, e.g. an accuracy) to ``step``: summary, sinks (:mod:`.attached`)."""
        self._transaction(lambda: attached.annotate(self._st, check_step(step), name, value))

    @property
    def best(self) -> Record | None:
        """The best checkpoint's record (what ``best.pt`` points at), or ``None``."""
        with self._tlock:  # the ranking index is updated lazily: read it under the object's lock
            self._refresh()
            step = self._rank.best_step()
            return None if step is None else self._st.records[step]

    @property
    def records(self) -> list[Record]:
        """Every record, pruned ones included, by step."""
        with self._tlock:
            self._refresh()
            return [self._st.records[s] for s in sorted(self._st.records)]

    def pending_steps(self) -> list[int]:
        """Steps saved with an evaluation still to come (oldest first)."""
        with self._tlock:
            self._refresh()
            return sorted(self._rank.with_status("pending"))

    def release(self, *steps: int) -> list[int]:
        """Stop protecting pending checkpoints whose evaluation will never come (all or none, logged):
        they become ``saved``, prunable like any unevaluated checkpoint, and retention runs at once.
        The command line's ``bestckpt release DIR STEP...``."""
        if not self.is_writer:
            raise errors.ConfigError(f"release changes the state of {self.dir}, but this tracker was opened with "
                                     "is_writer=False; release from the run's writer, or with `bestckpt release`")
        checked = [check_step(s) for s in steps]
        self._transaction(lambda: pending.release(self._st, checked))
        return checked

    def plan(self) -> list[Decision]:
        """Keep/delete decision for every checkpoint still on disk, with reasons (deletes nothing)."""
        with self._tlock:
            self._refresh()
            return commit.decide(self._st, self._rank, self.config)

    def prune(self, dry_run: bool | None = None) -> list[Decision]:
        """Apply retention now (``dry_run`` defaults to the config's); returns the decisions."""
        dry = self.config.dry_run if dry_run is None else bool(dry_run)
        decisions: list[list[Decision]] = [[]]

        def mutate() -> None:
            decisions[0] = commit.decide(self._st, self._rank, self.config)

        self._transaction(mutate, dry_run=dry)
        if dry:
            for d in decisions[0]:
                if not d.keep:
                    logger.info("dry run: would delete %s (%s)", d.path, "; ".join(d.reasons))
        return decisions[0]

    def summary(self) -> dict[str, Any]:
        """The run in one dict: ranking (best first, as JSON records), best, pending, failed, counts."""
        with self._tlock:
            self._refresh()
            return summary_of(self._st, self._rank, self.config)

    def log_summary(self) -> None:
        """Log the guide's ``=== Best Checkpoint Summary ===`` block (one log record)."""
        logger.info("%s", format_summary(self.summary()))

    def write_results(self) -> Path:
        """Write ``best_checkpoint_results.json`` now and return its path (``export_results`` returns the dict).

        Only the writer writes (a non-writer rank just gets the path). The file is also refreshed
        by every call that changes what it shows; it lists the ranking's first 100 records.
        """
        path = self.dir / layout.RESULTS_FILE
        if not self.is_writer:
            return path
        with self._locked():
            self._load()
            self._write_results(force=True)
        return path

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This object's thread lock (a background runner thread may share it), then the file lock."""
        assert self._lock is not None, "only the writer takes the lock"
        with self._tlock:
            try:
                self._lock.acquire()
            except filelock.Timeout:
                raise errors.StateLockTimeout(
                    f"could not lock {self.dir / layout.LOCK_FILE} within {self._lock.timeout} s; another "
                    "process holds it (a hung trainer/evaluator?). Stop it, or raise lock_timeout") from None
            try:
                yield
            finally:
                self._lock.release()

    def _refresh(self) -> None:
        with self._locked() if self.is_writer else self._tlock:
            self._load()

    def _transaction(self, mutate: Callable[[], _T], *, dry_run: bool | None = None) -> _T:
        """lock -> reload -> mutate -> write state -> swap best.pt -> delete (-> results)."""
        if not self.is_writer:
            with self._tlock:
                self._load()
                return mutate()  # same answers in memory, nothing written
        with self._locked():
            self._load()
            try:
                result = mutate()
                commit.commit(self._st, self._rank, self.config, self.config.dry_run if dry_run is None else dry_run)
                self._write_results()
            except BaseException as exc:
                self._st.stamp = None  # memory may differ from disk now: reread the disk next time
                if not isinstance(exc, OSError) or exc.errno not in _UNWRITABLE:
                    raise
                raise type(exc)(exc.errno, f"could not update the bookkeeping in {self.dir} ({exc}); fix its "
                                "permissions/free space. The files on disk stay consistent (every write is atomic) "
                                "and the next call repairs best.pt and finishes deletions") from exc
            return result

    def _checked_path(self, step: int, path: str | Path | None, epoch: int | None = None) -> str:
        """``path`` (default: the template's name) relative to the directory: inside it, on disk, not one of
        our files, sharing no entry with another live step (:mod:`~bestckpt.tracking.aliasing`; under the lock)."""
        default = self.config.step_filename(step, epoch) if path is None else ""
        rel = layout.checkpoint_relpath(self.dir, path, default, step, must_exist=True)
        check_new_path(self.dir, self._st.live_paths, step, rel)
        return rel

    def _load(self) -> None:
        """Reload the state if another process changed it since we last read or wrote it, and adopt
        the settings another process stored (``reconfigure=True`` / ``bestckpt prune --reconfigure``)."""
        reconcile.load(self._st, self.config, self.is_writer)
        if self._st.stored_config != self._seen_stored:
            self._use(settings.adopt(self.config, self._st.stored_config))

    def _write_results(self, force: bool = False) -> None:
        """Refresh ``best_checkpoint_results.json`` (the ranking's first ``HEADER_TOP`` records)."""
        summary = summary_of(self._st, self._rank, self.config, HEADER_TOP)
        self._results.write(summary, self._rank.head(HEADER_TOP), self.config.to_dict(), force=force)

    def __repr__(self) -> str:
        return (f"BestCheckpointTracker({str(self.dir)!r}, metric_name={self.metric_name!r}, "
                f"higher_is_better={self.higher_is_better}, save_top_k={self.save_top_k})")
