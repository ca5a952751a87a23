"""`BestCheckpointTracker`: the guide's tracker, made crash-safe and shareable between processes.

Every public call takes the directory's file lock, reloads ``best_checkpoints.json`` if another
process changed it (its ``(mtime_ns, size, inode)`` tells), mutates, writes the state atomically,
then points ``best.pt`` at the best checkpoint atomically, then deletes what retention dropped.
Deletions are recorded in the state (``deleting`` intents, records marked ``pruned``) *before*
anything is removed, so a crash mid-delete is finished on the next start. A crash between the
state write and the ``best.pt`` swap leaves ``best.pt`` on the previous best (still on disk, since
deletions come after the swap) with a ``best_link`` marker in the state; the next call repairs it.

Large states: once ``best_checkpoints.json`` exceeds ``state_compact_bytes`` (256 KiB, roughly
800 records) each call appends one fsynced line to ``best_checkpoints.journal`` instead of rewriting
the snapshot; the snapshot is rewritten when the journal reaches a quarter of its size and at every
tracker start. Read the state with :func:`bestckpt.journal.read_state` (snapshot + journal) or
``bestckpt status --json``; for ordinary runs ``best_checkpoints.json`` alone is always current.
A tracker object may be shared by threads (an in-process lock serialises its calls).

Documented choices:
- A checkpoint is ranked only when evaluated with a finite tracked metric; NaN, inf, a missing
  metric or :meth:`record_failure` give a ``failed`` record that is never best and never raises.
- Ties: the earlier step stays ahead. With ``min_improvement > 0`` the best is the incumbent, in
  step order, that no later checkpoint beat by more than ``min_improvement``.
- Duplicate step: the new call replaces the record (re-scoring, or a re-saved checkpoint), logged.
- Decreasing steps are allowed (out-of-order evaluation by another process); "latest" always
  means the highest step, not the most recent call.
- Records of pruned checkpoints stay in the state (``pruned: true``) as the run's history; a
  checkpoint deleted by hand is marked pruned with a warning and never resurrected.
- Only the writer writes (global rank 0 under ``torch.distributed``); other ranks read the
  state and compute the same answers in memory.

Layout: this module orchestrates (locking, transactions, retention, ``best.pt``, exports);
:mod:`bestckpt.tracking.state` holds :class:`Record`, the schema and the in-memory state with its
encoding; :mod:`bestckpt.tracking.reconcile` reloads it and reconciles it with the directory;
:mod:`bestckpt.tracking.ranking` keeps the ranking incrementally; :mod:`bestckpt.tracking.policies` decides
retention; :mod:`bestckpt.store` does every filesystem operation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import filelock

from bestckpt import errors, fsio
from bestckpt.tracking import bestlink, entries, journal, layout, locking, reconcile
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.console import format_score, format_summary
from bestckpt.tracking.policies import Candidate, Decision, retention_policy
from bestckpt.tracking.ranking import Ranking
from bestckpt.tracking.results import results_document
from bestckpt.tracking.state import (
    HEADER_TOP,
    STATE_SCHEMA,
    Record,
    StateError,
    TrackerState,
    check_step,
    clean_metrics,
)

__all__ = ["BestCheckpointTracker", "Record", "StateError", "STATE_SCHEMA"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def _default_is_writer() -> bool:
    """Global rank 0 under an initialised ``torch.distributed``, else ``RANK`` == 0, else True.

    torch is only consulted when the program already imported it (this module never imports torch).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank() == 0
        except Exception:  # a half-initialised process group: fall back to the environment
            pass
    rank = os.environ.get("RANK")
    if rank is not None:
        try:
            return int(rank) == 0
        except ValueError:
            raise ValueError(f"environment variable RANK={rank!r} is not an int; fix the launcher or pass is_writer") from None
    return True


class BestCheckpointTracker:
    """Rank evaluated checkpoints, keep the right ones, point ``best.pt`` at the best.

    ``BestCheckpointTracker(checkpoint_dir, metric_name="composite_score", higher_is_better=True,
    save_top_k=3, *, keep_latest=1, keep_every_n_steps=10_000, pinned_steps=(), min_improvement=0.0,
    dry_run=False, is_writer=None, config=None)``; see :class:`~bestckpt.tracking.config.TrackerConfig`.
    Pass ``config`` instead of the keyword settings to share one config object.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        metric_name: str = "composite_score",
        higher_is_better: bool = True,
        save_top_k: int = 3,
        *,
        keep_latest: int = 1,
        keep_every_n_steps: int | None = 10_000,
        pinned_steps: tuple[int, ...] | list[int] = (),
        min_improvement: float = 0.0,
        dry_run: bool = False,
        is_writer: bool | None = None,
        config: TrackerConfig | None = None,
        lock_timeout: float = 600.0,
        state_compact_bytes: int = 256 * 1024,
    ) -> None:
        if config is None:
            if checkpoint_dir is None:
                raise TypeError("BestCheckpointTracker needs checkpoint_dir (or config=TrackerConfig(...))")
            config = TrackerConfig(
                checkpoint_dir=checkpoint_dir, metric_name=metric_name, higher_is_better=higher_is_better,
                save_top_k=save_top_k, keep_latest=keep_latest, keep_every_n_steps=keep_every_n_steps,
                pinned_steps=tuple(pinned_steps), min_improvement=min_improvement, dry_run=dry_run,
            )
        elif not isinstance(config, TrackerConfig):
            raise TypeError(f"config must be a TrackerConfig, got {type(config).__name__}")
        self.config = config
        self.is_writer = _default_is_writer() if is_writer is None else bool(is_writer)
        self.dir = config.checkpoint_dir
        self._state_path = self.dir / layout.STATE_FILE
        self._st = TrackerState(self.dir, journal.StateFile(self.dir, compact_bytes=state_compact_bytes))
        self._rank = Ranking(self._st, config)  # incremental: a call re-ranks only what it changed
        self._results_signature: str | None = None
        self._results_fragments: dict[int, tuple[Record, str]] = {}  # step -> (record, its indented JSON)
        self._lock = None
        self._tlock = threading.RLock()
        if self.is_writer:
            if self.dir.exists() and not self.dir.is_dir():
                raise NotADirectoryError(
                    f"checkpoint_dir {self.dir} exists and is not a directory; pass the directory checkpoints are saved in"
                )
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot create checkpoint_dir {self.dir}: {exc.strerror}; "
                              "check the path and its permissions, or pass is_writer=False to only read") from exc
            self._lock = locking.lock(self.dir, timeout=lock_timeout)
            try:
                with self._locked():
                    self._startup()
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                    raise
                raise type(exc)(exc.errno, f"checkpoint_dir {self.dir} is not usable for writing ({exc}); "
                                "fix its permissions/free space, or pass is_writer=False to only read") from exc
        else:
            self._load()
            reconcile.check_metric_change(self._st, self.config)

    @classmethod
    def open(cls, checkpoint_dir: str | Path, *, is_writer: bool = False, **overrides: Any) -> "BestCheckpointTracker":
        """A tracker configured as the directory's state says (``overrides`` win; defaults where the
        state is missing or unreadable). Read-only unless ``is_writer``: what ``bestckpt status`` uses."""
        stored: dict[str, Any] = {}
        try:
            data = journal.read_state(Path(checkpoint_dir))
            if isinstance(data, dict):
                cfg = data.get("tracker_config")
                stored = dict(cfg) if isinstance(cfg, dict) else {
                    k: data[k] for k in ("metric_name", "higher_is_better", "save_top_k") if k in data}
        except (OSError, ValueError):
            pass
        extra = {k: overrides.pop(k) for k in ("lock_timeout", "state_compact_bytes") if k in overrides}
        config = TrackerConfig.from_dict(checkpoint_dir, stored, **overrides)
        return cls(config=config, is_writer=is_writer, **extra)

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

    def checkpoint_saved(self, step: int, path: str | Path | None = None, epoch: int | None = None,
                         evaluate: bool = True) -> None:
        """Say that step ``step``'s checkpoint is committed on disk; ``pending`` (protected from
        pruning until scored) if ``evaluate`` else ``saved`` (prunable like any unevaluated checkpoint)."""
        step = check_step(step)

        def mutate() -> None:
            rel = layout.checkpoint_relpath(self.dir, path, self.config.step_filename(step), step, must_exist=True)
            old = self._st.records.get(step)
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d saved again: its earlier %s record is replaced", step, old.status)
            self._st.put(Record(step=step, epoch=epoch, path=rel, metrics={}, status="pending" if evaluate else "saved",
                             time=time.time()))

        self._transaction(mutate)

    def update_checkpoint(self, step: int, epoch: int | None, checkpoint_path: str | Path | None,
                          metrics: Mapping[str, Any] | None, *, protocol_hash: str | None = None,
                          info: Mapping[str, Any] | None = None) -> bool:
        """Record step ``step``'s scores; returns whether it is now the best checkpoint.

        A missing, NaN or infinite tracked metric gives a ``failed`` record (logged, never best,
        no exception). A path outside ``checkpoint_dir`` or a checkpoint missing on disk raises.
        """
        step = check_step(step)
        clean, error = clean_metrics(metrics, self.metric_name)
        before: list[int | None] = [None]

        def mutate() -> bool:
            rel = layout.checkpoint_relpath(self.dir, checkpoint_path, self.config.step_filename(step), step, must_exist=True)
            before[0] = self._best_step()
            old = self._st.records.get(step)
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d re-scored: the new scores replace the earlier ones", step)
            prev_epoch = old.epoch if old is not None and not old.pruned else None
            best_now = self._st.records.get(before[0]) if before[0] is not None else None
            if (protocol_hash is not None and best_now is not None and best_now.protocol_hash is not None
                    and best_now.protocol_hash != protocol_hash):
                logger.warning("step %d was evaluated with protocol %s, the current best (step %d) with %s: "
                               "their scores are not comparable; re-evaluate with one protocol", step,
                               protocol_hash, best_now.step, best_now.protocol_hash)
            self._st.put(Record(
                step=step, epoch=epoch if epoch is not None else prev_epoch, path=rel, metrics=clean,
                status="failed" if error else "evaluated", time=time.time(), protocol_hash=protocol_hash,
                error=error, info=dict(info or {}),
            ))
            if error:
                logger.warning("step %d: evaluation recorded as failed (%s); it will never be best", step, error)
            return True

        with self._tlock:  # the answer must describe this call's commit, not another thread's
            self._transaction(mutate)
            best = self._best_step()
            if best == step and before[0] != step and self.is_writer:  # one log line per run, not per rank
                logger.info("🏆 New best checkpoint! Score: %s",
                            format_score(self._st.records[step].score(self.metric_name)))
        return best == step

    def record_failure(self, step: int, error: str, *, epoch: int | None = None,
                       checkpoint_path: str | Path | None = None, protocol_hash: str | None = None) -> None:
        """Record that evaluating step ``step`` failed (``error`` says why): never best, prunable."""
        step = check_step(step)

        def mutate() -> None:
            old = self._st.records.get(step)
            path = checkpoint_path if checkpoint_path is not None else (old.path if old and not old.pruned else None)
            rel = layout.checkpoint_relpath(self.dir, path, self.config.step_filename(step), step, must_exist=True)
            self._st.put(Record(step=step, epoch=epoch if epoch is not None else (old.epoch if old else None),
                             path=rel, metrics=dict(old.metrics) if old else {}, status="failed", time=time.time(),
                             protocol_hash=protocol_hash, error=str(error)))
            logger.warning("step %d: evaluation failed (%s); it will never be best", step, error)

        self._transaction(mutate)

    @property
    def best(self) -> Record | None:
        """The best checkpoint's record (what ``best.pt`` points at), or ``None``."""
        with self._tlock:  # the ranking index is updated lazily: read it under the object's lock
            self._refresh()
            step = self._best_step()
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

    def plan(self) -> list[Decision]:
        """Keep/delete decision for every checkpoint still on disk, with reasons (deletes nothing)."""
        with self._tlock:
            self._refresh()
            return self._decide()

    def prune(self, dry_run: bool | None = None) -> list[Decision]:
        """Apply retention now (``dry_run`` defaults to the config's); returns the decisions."""
        dry = self.config.dry_run if dry_run is None else bool(dry_run)
        decisions: list[list[Decision]] = [[]]

        def mutate() -> None:
            decisions[0] = self._decide()

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
            return self._summary()

    def _summary(self, limit: int | None = None) -> dict[str, Any]:
        ranking = self._ranking(limit)
        best = ranking[0] if ranking else None  # limit is None or >= 1: the head is the same
        records = self._st.records
        return {
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "save_top_k": self.save_top_k,
            "total_tracked": self._rank.count(),
            "best_score": best.score(self.metric_name) if best else None,
            "best_checkpoint": best.path if best else None,
            "best_step": best.step if best else None,
            "ranking": [r.to_json() for r in ranking],
            "evaluated": len(self._rank.with_status("evaluated")),
            "pending": sorted(self._rank.with_status("pending")),
            "failed": [{"step": s, "error": records[s].error} for s in self._rank.failed_steps()],
            "records_total": len(records),
            "on_disk": len(self._st.live_steps),
        }

    def log_summary(self) -> None:
        """Log the guide's ``=== Best Checkpoint Summary ===`` block (one log record)."""
        logger.info("%s", format_summary(self.summary()))

    def export_results(self) -> Path:
        """Write ``best_checkpoint_results.json`` (the guide's summary export) and return its path.

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
        if self.is_writer:
            with self._locked():
                self._load()
        else:
            with self._tlock:
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
                self._commit(self.config.dry_run if dry_run is None else dry_run)
            except BaseException as exc:
                self._st.stamp = None  # memory may differ from disk now: reread the disk next time
                if not isinstance(exc, OSError) or exc.errno not in (
                        errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                    raise
                raise type(exc)(exc.errno, f"could not update the bookkeeping in {self.dir} ({exc}); fix its "
                                "permissions/free space. The files on disk stay consistent (every write is atomic) "
                                "and the next call repairs best.pt and finishes deletions") from exc
            return result

    def _check_present(self) -> None:
        """Drop (with a warning) vanished checkpoints that best.pt could point at, and the newest.

        Cheap (a few ``lstat`` calls): the full check of every live record runs on full reloads.
        """
        newest = max(self._st.live_steps, default=None)
        if newest is not None and entries.entry_stat(self.dir, self._st.records[newest].path) is None:
            reconcile.drop_missing(self._st, self._st.records[newest])
        while True:
            best = self._best_step()
            if best is None or entries.entry_stat(self.dir, self._st.records[best].path) is not None:
                return
            reconcile.drop_missing(self._st, self._st.records[best])

    def _commit(self, dry_run: bool) -> None:
        self._check_present()
        best_step = self._best_step()
        best_rel = None if best_step is None else self._st.records[best_step].path
        doomed: list[Decision] = []
        if not dry_run and self._rank.may_delete():  # else every candidate is top-k or pending: all kept
            doomed = [d for d in self._decide(best_step) if not d.keep]
        for d in doomed:
            rec = self._st.records[d.step]
            self._st.put(dataclasses.replace(rec, pruned=True))
            st = entries.entry_stat(self.dir, rec.path)
            if st is None:
                continue
            self._st.intents.append({"step": rec.step, "path": rec.path, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns})
        link = self.dir / layout.BEST_LINK
        current = bestlink.read_pointer(link)
        marker = {"from": current, "to": best_rel} if current != best_rel else None
        self._write_state(best_step, marker)
        if best_rel is not None and current != best_rel:
            bestlink.atomic_symlink(link, best_rel, target_is_directory=(self.dir / best_rel).is_dir())
            logger.debug("best.pt -> %s", best_rel)
        elif best_rel is None and link.is_symlink():
            os.unlink(link)  # nothing rankable any more: a stale pointer would lie
            logger.warning("no checkpoint can be ranked any more; removed %s", link)
        reconcile.finish_intents(self._st)
        self._write_results()

    # ------------------------------------------------------------------ ranking
    def _candidates(self) -> list[Candidate]:
        return self._rank.candidates()

    def _best_step(self) -> int | None:
        return self._rank.best_step()

    def _ranking(self, limit: int | None = None) -> list[Record]:
        """The top-k records, best first (at most ``limit``)."""
        return self._rank.head(limit)

    def _decide(self, best_step: int | None = None) -> list[Decision]:
        cands = self._candidates()
        if best_step is None:
            best_step = self._best_step()
        cfg = self.config
        policy = retention_policy(
            save_top_k=cfg.save_top_k, higher_is_better=cfg.higher_is_better, metric_name=cfg.metric_name,
            keep_latest=cfg.keep_latest, keep_every_n_steps=cfg.keep_every_n_steps, pinned_steps=cfg.pinned_steps,
            best_step=best_step, protected=self._protected(),
        )
        return policy.decide(cands)

    def _protected(self) -> dict[int, str]:
        """Steps kept for reasons outside the config: DeepSpeed's ``latest`` tag, recovered records."""
        out: dict[int, str] = {}
        try:
            tag = (self.dir / "latest").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            tag = ""
        step = self.config.step_from_name(tag) if tag else None
        if step is not None:
            out[step] = "named by DeepSpeed 'latest'"
        for r in self._st.live():
            if r.info.get("recovered") and r.status == "saved":
                out[r.step] = "recovered after state loss (evaluate it, or delete it by hand)"
        return out

    # ------------------------------------------------------------------ state I/O
    def _load(self) -> None:
        """Reload the state if another process changed it since we last read or wrote it."""
        reconcile.load(self._st, self.config, self.is_writer)

    def _startup(self) -> None:
        """First load by the writer: clean leftovers, reconcile, report unknown entries, check the metric."""
        link = self.dir / layout.BEST_LINK
        if os.path.lexists(link) and not link.is_symlink():
            raise FileExistsError(
                f"{link} exists and is not a symlink; bestckpt will not overwrite it. "
                f"Move it away so that {link.name} can point at the best checkpoint."
            )
        removed = entries.cleanup_temporaries(self.dir)
        if removed:
            logger.info("removed %d leftover temporary entries in %s", len(removed), self.dir)
        self._load()
        if (self._st.stamp is None or self._st.stamp[0] is None) and not self._st.records:
            reconcile.rebuild_from_disk(self._st, self.config)
        unknown = reconcile.unknown_entries(self._st, self.config)
        if unknown:
            logger.warning("%d checkpoint entries in %s are not in the state and will not be touched: %s",
                           len(unknown), self.dir, ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
        reconcile.check_metric_change(self._st, self.config)
        self._st.force_full = True  # every start compacts: best_checkpoints.json alone is current again
        self._write_state(self._best_step(), None)
        self._repair_best_link()

    def _repair_best_link(self) -> None:
        best_step = self._best_step()
        link = self.dir / layout.BEST_LINK
        if best_step is None:
            return
        rel = self._st.records[best_step].path
        if bestlink.read_pointer(link) != rel:
            bestlink.atomic_symlink(link, rel, target_is_directory=(self.dir / rel).is_dir())
            logger.info("best.pt now points at %s", rel)

    def _write_state(self, best_step: int | None, marker: dict[str, Any] | None) -> None:
        """Persist the state: a full atomic snapshot, or (large states) one journal line."""
        ranking = [r.step for r in self._ranking(HEADER_TOP)]
        header: dict[str, Any] = {
            "schema": STATE_SCHEMA,
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "save_top_k": self.save_top_k,
            "tracker_config": self.config.to_dict(),
            "best_step": best_step,
            "best_checkpoint": None if best_step is None else self._st.records[best_step].path,
            "top_k": ranking,
            "best_link": marker,
            "deleting": self._st.intents,
            "updated_at": time.time(),
        }
        self._st.write(header, self.config.to_dict())

    def _write_results(self, force: bool = False) -> None:
        """Rewrite ``best_checkpoint_results.json`` when its content changed (the ranking's first
        ``HEADER_TOP`` records are listed). Derived from the state, so atomic but not fsynced."""
        head = self._ranking(HEADER_TOP)
        doc = results_document(self._summary(limit=HEADER_TOP), self.config.to_dict(), time.time())
        # Same text as to_strict_json(doc, indent=2), but each ranked record is encoded once (they
        # are immutable) instead of at every call.
        cache = self._results_fragments
        if len(cache) > 4 * HEADER_TOP:
            cache.clear()
        fragments = []
        for rec in head:
            hit = cache.get(rec.step)
            if hit is None or hit[0] is not rec:
                hit = cache[rec.step] = (rec, fsio.to_strict_json(rec.to_json(), indent=2))
            fragments.append(hit[1])
        assert len(fragments) == len(doc["best_checkpoints"]) and list(doc)[-1] == "updated_at"
        members = [(key, fsio.indented_array(fragments) if key == "best_checkpoints"
                    else fsio.to_strict_json(value, indent=2)) for key, value in doc.items()]
        signature = fsio.indented_object(members[:-1])
        if not force and signature == self._results_signature and (self.dir / layout.RESULTS_FILE).exists():
            return
        fsio.atomic_write_text(self.dir / layout.RESULTS_FILE, fsio.indented_object(members) + "\n", durable=False)
        self._results_signature = signature

    def __repr__(self) -> str:
        return (f"BestCheckpointTracker({str(self.dir)!r}, metric_name={self.metric_name!r}, "
                f"higher_is_better={self.higher_is_better}, save_top_k={self.save_top_k})")
