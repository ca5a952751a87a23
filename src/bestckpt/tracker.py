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
tracker start. Read the state with :func:`bestckpt.store.read_state` (snapshot + journal) or
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
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import operator
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import filelock

from bestckpt import store
from bestckpt.config import TrackerConfig
from bestckpt.policies import Candidate, Decision, rank, retention_policy, select_best
from bestckpt.sinks.console import format_score, format_summary
from bestckpt.sinks.results import results_document

__all__ = ["BestCheckpointTracker", "Record", "StateError", "STATE_SCHEMA"]

logger = logging.getLogger(__name__)

STATE_SCHEMA = "bestckpt.state/1"
STATUSES = ("pending", "saved", "evaluated", "failed")
_HEADER_TOP = 100  # the state header's "top_k" lists at most this many steps (the ranking's head)
_T = TypeVar("_T")


class StateError(RuntimeError):
    """The state cannot be used as is (written by a newer bestckpt, or a metric change without data)."""


@dataclass(frozen=True)
class Record:
    """One checkpoint known to the tracker.

    ``path`` is relative to the checkpoint directory; ``metrics`` maps metric names to floats
    (``None`` where a value was unusable); ``status`` is ``pending`` (saved, evaluation to come),
    ``saved`` (not to be evaluated), ``evaluated`` or ``failed``; ``pruned`` once retention deleted
    it (or it vanished from disk). In JSON, ``path`` and ``time`` are stored under the original's
    keys ``checkpoint_path`` and ``timestamp``.
    """

    step: int
    epoch: int | None
    path: str
    metrics: dict[str, float | None]
    status: str
    time: float
    protocol_hash: str | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    pruned: bool = False

    def score(self, metric_name: str) -> float | None:
        """The tracked value if this record can be ranked on it, else ``None``."""
        if self.status != "evaluated":
            return None
        value = self.metrics.get(metric_name)
        return value if value is not None and math.isfinite(value) else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step, "epoch": self.epoch, "checkpoint_path": self.path,
            "metrics": self.metrics, "status": self.status, "timestamp": self.time,
        }
        if self.protocol_hash is not None:
            out["protocol_hash"] = self.protocol_hash
        if self.error is not None:
            out["error"] = self.error
        if self.info:
            out["info"] = self.info
        if self.pruned:
            out["pruned"] = True
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Record":
        """Parse one stored record; ``ValueError`` says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError(f"record must be an object, got {type(data).__name__}")
        step = data.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"record step must be a non-negative int, got {step!r}")
        path = data.get("checkpoint_path", data.get("path"))
        if not isinstance(path, str) or not path:
            raise ValueError(f"record of step {step} has no checkpoint_path (got {path!r})")
        epoch = data.get("epoch")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise ValueError(f"record of step {step} has a non-int epoch {epoch!r}")
        raw_metrics = data.get("metrics") or {}
        if not isinstance(raw_metrics, dict):
            raise ValueError(f"record of step {step} has non-object metrics {raw_metrics!r}")
        metrics = {str(k): store.float_from_json(v) for k, v in raw_metrics.items()}
        status = data.get("status", "evaluated")  # the original's records were all evaluated
        if status not in STATUSES:
            raise ValueError(f"record of step {step} has unknown status {status!r}")
        stamp = data.get("timestamp", data.get("time", 0.0))
        info = data.get("info") or {}
        return cls(
            step=step, epoch=epoch, path=path, metrics=metrics, status=status,
            time=float(stamp) if isinstance(stamp, (int, float)) else 0.0,
            protocol_hash=data.get("protocol_hash"), error=data.get("error"),
            info=info if isinstance(info, dict) else {"value": info}, pruned=bool(data.get("pruned", False)),
        )


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


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # numbers, numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return None


class BestCheckpointTracker:
    """Rank evaluated checkpoints, keep the right ones, point ``best.pt`` at the best.

    ``BestCheckpointTracker(checkpoint_dir, metric_name="composite_score", higher_is_better=True,
    save_top_k=3, *, keep_latest=1, keep_every_n_steps=10_000, pinned_steps=(), min_improvement=0.0,
    dry_run=False, is_writer=None, config=None)``; see :class:`~bestckpt.config.TrackerConfig`.
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
        self._state_path = self.dir / store.STATE_FILE
        self._sf = store.StateFile(self.dir, compact_bytes=state_compact_bytes)
        self._records: dict[int, Record] = {}
        self._live_steps: set[int] = set()  # not pruned, not refused: what retention looks at
        self._dirty: set[int] = set()  # records changed since the last write (journal entries)
        self._version = 0  # bumped at every change: keys the memo of ranking computations
        self._memo: dict[str, Any] = {}
        self._force_full = False
        self._unreadable: list[Any] = []  # stored entries we could not parse: kept, written back
        self._intents: list[dict[str, Any]] = []  # deletions decided, maybe not yet done
        self._refused: dict[int, str] = {}  # records whose path escapes the directory
        self._stored_config: dict[str, Any] = {}
        self._stamp: tuple[Any, Any] | None = None
        self._fragments: dict[int, tuple[Record, str]] = {}  # cached JSON of unchanged records
        self._results_signature: str | None = None
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
            self._lock = store.lock(self.dir, timeout=lock_timeout)
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
            self._check_metric_change()

    @classmethod
    def open(cls, checkpoint_dir: str | Path, *, is_writer: bool = False, **overrides: Any) -> "BestCheckpointTracker":
        """A tracker configured as the directory's state says (``overrides`` win; defaults where the
        state is missing or unreadable). Read-only unless ``is_writer``: what ``bestckpt status`` uses."""
        stored: dict[str, Any] = {}
        try:
            data = store.read_state(Path(checkpoint_dir))
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
        step = self._check_step(step)

        def mutate() -> None:
            rel = self._relpath(path, step, must_exist=True)
            old = self._records.get(step)
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d saved again: its earlier %s record is replaced", step, old.status)
            self._put(Record(step=step, epoch=epoch, path=rel, metrics={}, status="pending" if evaluate else "saved",
                             time=time.time()))

        self._transaction(mutate)

    def update_checkpoint(self, step: int, epoch: int | None, checkpoint_path: str | Path | None,
                          metrics: Mapping[str, Any] | None, *, protocol_hash: str | None = None,
                          info: Mapping[str, Any] | None = None) -> bool:
        """Record step ``step``'s scores; returns whether it is now the best checkpoint.

        A missing, NaN or infinite tracked metric gives a ``failed`` record (logged, never best,
        no exception). A path outside ``checkpoint_dir`` or a checkpoint missing on disk raises.
        """
        step = self._check_step(step)
        clean, error = self._clean_metrics(metrics)
        before: list[int | None] = [None]

        def mutate() -> bool:
            rel = self._relpath(checkpoint_path, step, must_exist=True)
            before[0] = self._best_step()
            old = self._records.get(step)
            if old is not None and not old.pruned and old.status in ("evaluated", "failed"):
                logger.info("step %d re-scored: the new scores replace the earlier ones", step)
            prev_epoch = old.epoch if old is not None and not old.pruned else None
            best_now = self._records.get(before[0]) if before[0] is not None else None
            if (protocol_hash is not None and best_now is not None and best_now.protocol_hash is not None
                    and best_now.protocol_hash != protocol_hash):
                logger.warning("step %d was evaluated with protocol %s, the current best (step %d) with %s: "
                               "their scores are not comparable; re-evaluate with one protocol", step,
                               protocol_hash, best_now.step, best_now.protocol_hash)
            self._put(Record(
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
                            format_score(self._records[step].score(self.metric_name)))
        return best == step

    def record_failure(self, step: int, error: str, *, epoch: int | None = None,
                       checkpoint_path: str | Path | None = None, protocol_hash: str | None = None) -> None:
        """Record that evaluating step ``step`` failed (``error`` says why): never best, prunable."""
        step = self._check_step(step)

        def mutate() -> None:
            old = self._records.get(step)
            path = checkpoint_path if checkpoint_path is not None else (old.path if old and not old.pruned else None)
            rel = self._relpath(path, step, must_exist=True)
            self._put(Record(step=step, epoch=epoch if epoch is not None else (old.epoch if old else None),
                             path=rel, metrics=dict(old.metrics) if old else {}, status="failed", time=time.time(),
                             protocol_hash=protocol_hash, error=str(error)))
            logger.warning("step %d: evaluation failed (%s); it will never be best", step, error)

        self._transaction(mutate)

    @property
    def best(self) -> Record | None:
        """The best checkpoint's record (what ``best.pt`` points at), or ``None``."""
        self._refresh()
        step = self._best_step()
        return None if step is None else self._records[step]

    @property
    def records(self) -> list[Record]:
        """Every record, pruned ones included, by step."""
        self._refresh()
        return [self._records[s] for s in sorted(self._records)]

    def pending_steps(self) -> list[int]:
        """Steps saved with an evaluation still to come (oldest first)."""
        self._refresh()
        return sorted(r.step for r in self._live() if r.status == "pending")

    def plan(self) -> list[Decision]:
        """Keep/delete decision for every checkpoint still on disk, with reasons (deletes nothing)."""
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
        self._refresh()
        return self._summary()

    def _summary(self, limit: int | None = None) -> dict[str, Any]:
        ranking = self._ranking()
        best = ranking[0] if ranking else None
        live = self._live()
        return {
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "save_top_k": self.save_top_k,
            "total_tracked": len(ranking),
            "best_score": best.score(self.metric_name) if best else None,
            "best_checkpoint": best.path if best else None,
            "best_step": best.step if best else None,
            "ranking": [r.to_json() for r in ranking[:limit]],
            "evaluated": sum(1 for r in live if r.status == "evaluated"),
            "pending": sorted(r.step for r in live if r.status == "pending"),
            "failed": [{"step": r.step, "error": r.error} for r in sorted(live, key=lambda r: r.step)
                       if r.status == "failed" or (r.status == "evaluated" and r.score(self.metric_name) is None)],
            "records_total": len(self._records),
            "on_disk": len(live),
        }

    def log_summary(self) -> None:
        """Log the guide's ``=== Best Checkpoint Summary ===`` block (one log record)."""
        logger.info("%s", format_summary(self.summary()))

    def export_results(self) -> Path:
        """Write ``best_checkpoint_results.json`` (the guide's summary export) and return its path.

        Only the writer writes (a non-writer rank just gets the path). The file is also refreshed
        by every call that changes what it shows; it lists the ranking's first 100 records.
        """
        path = self.dir / store.RESULTS_FILE
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
                raise store.StateLockTimeout(
                    f"could not lock {self.dir / store.LOCK_FILE} within {self._lock.timeout} s; another "
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
                self._stamp = None  # memory may differ from disk now: reread the disk next time
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
        newest = max(self._live_steps, default=None)
        if newest is not None and not os.path.lexists(self.dir / self._records[newest].path):
            self._drop_missing(self._records[newest])
        while True:
            best = self._best_step()
            if best is None or os.path.lexists(self.dir / self._records[best].path):
                return
            self._drop_missing(self._records[best])

    def _drop_missing(self, rec: Record) -> None:
        logger.warning("checkpoint %s (step %d) was deleted outside bestckpt; dropping it", rec.path, rec.step)
        self._put(dataclasses.replace(rec, pruned=True, info=dict(rec.info, removed="missing on disk")))

    def _commit(self, dry_run: bool) -> None:
        self._check_present()
        best_step = self._best_step()
        best_rel = None if best_step is None else self._records[best_step].path
        doomed: list[Decision] = [] if dry_run else [d for d in self._decide(best_step) if not d.keep]
        for d in doomed:
            rec = self._records[d.step]
            self._put(dataclasses.replace(rec, pruned=True))
            entry = self.dir / rec.path
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                continue
            self._intents.append({"step": rec.step, "path": rec.path, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns})
        link = self.dir / store.BEST_LINK
        current = store.read_pointer(link)
        marker = {"from": current, "to": best_rel} if current != best_rel else None
        self._write_state(best_step, marker)
        if best_rel is not None and current != best_rel:
            store.atomic_symlink(link, best_rel, target_is_directory=(self.dir / best_rel).is_dir())
            logger.debug("best.pt -> %s", best_rel)
        elif best_rel is None and link.is_symlink():
            os.unlink(link)  # nothing rankable any more: a stale pointer would lie
            logger.warning("no checkpoint can be ranked any more; removed %s", link)
        self._finish_intents()
        self._write_results()

    def _finish_intents(self) -> None:
        """Carry out recorded deletions whose entry is still the one we decided to delete."""
        for intent in self._intents:
            rel = intent.get("path")
            if not isinstance(rel, str):
                continue
            try:
                entry = store.confine(self.dir, rel)
                st = os.lstat(entry)
            except FileNotFoundError:
                continue
            except store.UnsafePathError as exc:
                logger.error("refusing to delete %r: %s", rel, exc)
                continue
            if (st.st_ino, st.st_mtime_ns) != (intent.get("ino"), intent.get("mtime_ns")):
                logger.info("not deleting %s: it was replaced after the deletion was decided", rel)
                continue
            try:
                store.delete_entry(self.dir, rel)
                logger.info("deleted checkpoint %s (retention)", rel)
            except (OSError, store.UnsafePathError) as exc:
                logger.error("could not delete checkpoint %s: %s", rel, exc)
        self._intents = []

    # ------------------------------------------------------------------ ranking
    def _live(self) -> list[Record]:
        return [self._records[s] for s in self._live_steps]

    def _memoized(self, key: str, compute: Callable[[], _T]) -> _T:
        """Ranking computations are done once per state version (a commit asks several times)."""
        if self._memo.get("version") != self._version:
            self._memo = {"version": self._version}
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _candidates(self) -> list[Candidate]:
        name = self.metric_name
        return self._memoized("candidates", lambda: [
            Candidate(r.step, r.path, r.status, r.score(name), r.time) for r in self._live()])

    def _best_step(self, candidates: list[Candidate] | None = None) -> int | None:
        def compute() -> int | None:
            best = select_best(self._candidates(), self.higher_is_better, self.config.min_improvement)
            return None if best is None else best.step

        return self._memoized("best", compute)

    def _ranking(self) -> list[Record]:
        """The top-k records, best first (the best leads even when min_improvement kept it over a
        slightly higher score)."""
        return self._memoized("ranking", self._compute_ranking)

    def _compute_ranking(self) -> list[Record]:
        cands = self._candidates()
        ranked = rank(cands, self.higher_is_better)
        best = self._best_step()
        steps = [c.step for c in ranked]
        if best is not None:
            steps.remove(best)
            steps.insert(0, best)
        if self.save_top_k >= 0:
            steps = steps[: self.save_top_k]
        return [self._records[s] for s in steps]

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
        for r in self._live():
            if r.info.get("recovered") and r.status == "saved":
                out[r.step] = "recovered after state loss (evaluate it, or delete it by hand)"
        return out

    # ------------------------------------------------------------------ state I/O
    def _put(self, record: Record, *, dirty: bool = True) -> None:
        self._records[record.step] = record
        if record.pruned or record.step in self._refused:
            self._live_steps.discard(record.step)
        else:
            self._live_steps.add(record.step)
        if dirty:
            self._dirty.add(record.step)
        self._version += 1

    def _set_records(self, records: dict[int, Record]) -> None:
        self._records = records
        self._live_steps = {s for s, r in records.items() if not r.pruned and s not in self._refused}
        self._dirty = set()
        self._version += 1

    def _check_step(self, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                step = operator.index(step)  # numpy / 0-d tensor ints
            except TypeError:
                raise TypeError(f"step must be an int, got {step!r} ({type(step).__name__})") from None
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return int(step)

    def _relpath(self, path: str | Path | None, step: int, *, must_exist: bool) -> str:
        """``path`` as a path relative to the checkpoint directory (default: the step's file name).

        Absolute paths must lie inside the directory. A relative path is taken relative to the
        current directory when that lands inside the checkpoint directory, else relative to it.
        """
        if path is None:
            rel = self.config.step_filename(step)
        else:
            p = Path(path)
            root = self.dir.resolve()
            candidates = [p] if p.is_absolute() else [Path.cwd() / p, self.dir / p]
            rel = None
            for cand in candidates:
                parent = cand.parent.resolve()
                if parent == root or root in parent.parents:
                    rel = os.path.relpath(parent / cand.name, root)
                    break
            if rel is None or rel in (".", "") or rel.startswith(".."):
                raise ValueError(
                    f"checkpoint path {str(path)!r} is not inside checkpoint_dir {self.dir}; save checkpoints into "
                    "that directory (or create the tracker on the directory they are saved in)"
                )
        store.confine(self.dir, rel)
        if must_exist and not os.path.lexists(self.dir / rel):
            raise FileNotFoundError(
                f"checkpoint {self.dir / rel} of step {step} does not exist; call the tracker after the checkpoint "
                "is completely saved (and pass the path it was saved to)"
            )
        return rel

    def _clean_metrics(self, metrics: Any) -> tuple[dict[str, float | None], str | None]:
        """Floats (``None`` where unusable) and the failure reason for the tracked metric, if any."""
        if metrics is None or not isinstance(metrics, Mapping):
            return {}, f"metrics must be a mapping of metric name to number, got {type(metrics).__name__}"
        clean: dict[str, float | None] = {}
        for key, value in metrics.items():
            number = _to_float(value)
            if number is None and value is not None:
                logger.warning("metric %r has a non-numeric value %r; stored as null", key, value)
            clean[str(key)] = number
        name = self.metric_name
        if name not in clean:
            return clean, f"tracked metric {name!r} missing (got {sorted(clean)})"
        value = clean[name]
        if value is None:
            return clean, f"tracked metric {name!r} is not a number ({metrics[name]!r})"
        if not math.isfinite(value):
            return clean, f"tracked metric {name!r} is {value}"
        return clean, None

    def _load(self) -> None:
        """Reload the state if another process changed it since we last read or wrote it.

        The snapshot's and the journal's ``(mtime_ns, size, inode)`` tell; when only the journal
        grew, just the new transactions are read.
        """
        stamp = self._sf.stamp()
        if stamp == self._stamp:
            return
        if stamp[0] is None:
            if self._stamp is not None and self._stamp[0] is not None:
                logger.warning("%s disappeared; rebuilding the state from the checkpoints on disk", self._state_path)
                self._set_records({})
                self._rebuild_from_disk()
            self._stamp = stamp
            return
        if self._stamp is not None and stamp[0] == self._stamp[0] and self._sf.journal_id is not None:
            try:
                entries = self._sf.read_journal(self._sf.journal_id, incremental=True)
            except ValueError:
                entries = None
            if entries is not None:
                for entry in entries:
                    self._apply_entry(entry)
                self._stamp = stamp
                return
        snap = self._sf.read_snapshot()
        if snap is None:
            self._stamp = None
            return self._load()
        try:
            data = self._parse(snap[0])
        except StateError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            self._corrupt(str(exc))
            return
        try:
            entries = self._sf.read_journal(data.get("journal_id"))
        except ValueError as exc:
            self._journal_corrupt(str(exc))
            entries = []
        for entry in entries:
            self._apply_entry(entry)
        self._stamp = stamp
        self._reconcile()

    def _parse(self, raw: bytes) -> dict[str, Any]:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        schema = data.get("schema")
        if schema is None:
            if not isinstance(data.get("checkpoints"), list) or "metric_name" not in data:
                raise ValueError("not a bestckpt state file (no 'schema', no 'checkpoints' list)")
            logger.info("%s is in the original tracker's format; importing it", self._state_path)
            self._force_full = True
        elif isinstance(schema, str) and schema.startswith("bestckpt.state/") and schema != STATE_SCHEMA:
            raise StateError(f"{self._state_path} has schema {schema!r}, newer than this bestckpt ({STATE_SCHEMA}); "
                             "upgrade bestckpt")
        elif schema != STATE_SCHEMA:
            raise ValueError(f"unknown schema {schema!r}")
        entries = data.get("checkpoints")
        if not isinstance(entries, list):
            raise ValueError("'checkpoints' is not a list")
        records: dict[int, Record] = {}
        unreadable = list(data.get("unreadable_checkpoints") or [])
        for entry in entries:
            try:
                rec = Record.from_json(entry)
            except ValueError as exc:
                logger.error("%s: unreadable record kept aside (%s): %r", self._state_path, exc, entry)
                unreadable.append(entry)
                continue
            if schema is None:  # the original stored absolute or cwd-relative paths
                rec = dataclasses.replace(rec, path=self._legacy_relpath(rec.path))
            if rec.step in records:
                logger.warning("%s lists step %d twice; the later entry wins", self._state_path, rec.step)
            records[rec.step] = rec
        self._refused = {}
        for rec in records.values():
            self._check_confined(rec)
        self._set_records(records)
        self._unreadable = unreadable
        self._apply_header(data)
        self._sf.journal_id = data.get("journal_id") if isinstance(data.get("journal_id"), str) else None
        return data

    def _check_confined(self, rec: Record) -> None:
        try:
            store.confine(self.dir, rec.path)
        except store.UnsafePathError as exc:
            self._refused[rec.step] = str(exc)
            logger.error("state entry of step %d refused: %s (never deleted, never best)", rec.step, exc)
        else:
            self._refused.pop(rec.step, None)

    def _apply_header(self, header: Mapping[str, Any]) -> None:
        intents = header.get("deleting") or []
        self._intents = [i for i in intents if isinstance(i, dict)] if isinstance(intents, list) else []
        cfg = header.get("tracker_config")
        if isinstance(cfg, dict):
            self._stored_config = dict(cfg)
        elif "metric_name" in header:
            self._stored_config = {"metric_name": header.get("metric_name"),
                                   "higher_is_better": header.get("higher_is_better")}

    def _apply_entry(self, entry: Mapping[str, Any]) -> None:
        """One journal transaction: its header fields and the records it changed."""
        header = entry.get("header")
        if isinstance(header, dict):
            self._apply_header(header)
        for raw in entry.get("records") or []:
            try:
                rec = Record.from_json(raw)
            except ValueError as exc:
                logger.error("%s: unreadable record kept aside (%s): %r", self._sf.journal_path, exc, raw)
                self._unreadable.append(raw)
                continue
            self._check_confined(rec)
            self._put(rec, dirty=False)

    def _journal_corrupt(self, why: str) -> None:
        """Keep the snapshot, move the unreadable journal aside, and re-adopt what is on disk."""
        journal = self._sf.journal_path
        if self.is_writer:
            aside = journal.with_name(f"{journal.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.replace(journal, aside)
            store.fsync_dir(self.dir)
            logger.error("%s (%s); moved it to %s; checkpoints on disk that the state lost are re-adopted",
                         why, journal, aside.name)
        else:
            logger.error("%s; ignoring the journal", why)
        self._sf.torn = True
        self._force_full = True
        self._rebuild_from_disk()

    def _legacy_relpath(self, path: str) -> str:
        p = Path(path)
        root = self.dir.resolve()
        for cand in ([p] if p.is_absolute() else [self.dir / p, Path.cwd() / p, self.dir / p.name]):
            try:
                parent = cand.parent.resolve()
            except OSError:
                continue
            if (parent == root or root in parent.parents) and os.path.lexists(parent / cand.name):
                return os.path.relpath(parent / cand.name, root)
        return path

    def _corrupt(self, why: str) -> None:
        """Move an unreadable state aside (never lose it) and rebuild from the checkpoints on disk."""
        if self.is_writer:
            aside = self._state_path.with_name(f"{store.STATE_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.replace(self._state_path, aside)
            store.fsync_dir(self.dir)
            logger.error("%s is unreadable (%s); moved it to %s and rebuilt the state from the checkpoints on disk",
                         self._state_path, why, aside.name)
        else:
            logger.error("%s is unreadable (%s); reading the checkpoints on disk instead", self._state_path, why)
        if self.is_writer and os.path.lexists(self._sf.journal_path):
            journal = self._sf.journal_path
            os.replace(journal, journal.with_name(f"{journal.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"))
        self._refused = {}
        self._set_records({})
        self._unreadable, self._intents = [], []
        self._stored_config = {}
        self._stamp = None
        self._sf.journal_id = None
        self._force_full = True
        self._rebuild_from_disk()

    def _rebuild_from_disk(self) -> None:
        """Every step checkpoint on disk that the state does not know becomes a ``saved`` record,
        protected from pruning (its scores were lost: re-evaluate it or delete it by hand)."""
        adopted = 0
        for step, name in self._scan():
            if step in self._records and not self._records[step].pruned:
                continue
            try:
                mtime = os.lstat(self.dir / name).st_mtime
            except OSError:
                continue
            self._put(Record(step=step, epoch=None, path=name, metrics={}, status="saved", time=mtime,
                             info={"recovered": "state lost; rebuilt from disk"}))
            adopted += 1
        if adopted:
            logger.warning("rebuilt %d checkpoint records from disk in %s", adopted, self.dir)

    def _scan(self) -> Iterator[tuple[int, str]]:
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return
        for name in names:
            step = self.config.step_from_name(name)
            if step is not None:
                yield step, name

    def _reconcile(self) -> None:
        """After a reload: drop records whose checkpoint vanished, finish interrupted deletions
        (the writer only; readers just see the vanished ones as pruned)."""
        for rec in self._live():
            if not os.path.lexists(self.dir / rec.path):
                self._drop_missing(rec)
        if self._intents and self.is_writer:
            self._finish_intents()

    def _startup(self) -> None:
        """First load by the writer: clean leftovers, reconcile, report unknown entries, check the metric."""
        link = self.dir / store.BEST_LINK
        if os.path.lexists(link) and not link.is_symlink():
            raise FileExistsError(
                f"{link} exists and is not a symlink; bestckpt will not overwrite it. "
                f"Move it away so that {link.name} can point at the best checkpoint."
            )
        removed = store.cleanup_temporaries(self.dir)
        if removed:
            logger.info("removed %d leftover temporary entries in %s", len(removed), self.dir)
        self._load()
        if (self._stamp is None or self._stamp[0] is None) and not self._records:
            self._rebuild_from_disk()
        known = {r.path for r in self._records.values() if not r.pruned}
        unknown = [name for _, name in self._scan() if name not in known]
        if unknown:
            logger.warning("%d checkpoint entries in %s are not in the state and will not be touched: %s",
                           len(unknown), self.dir, ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
        self._check_metric_change()
        self._force_full = True  # every start compacts: best_checkpoints.json alone is current again
        self._write_state(self._best_step(), None)
        self._repair_best_link()

    def _check_metric_change(self) -> None:
        """Re-rank by a new metric/direction from the stored metrics, or fail clearly if absent."""
        old_name = self._stored_config.get("metric_name")
        old_dir = self._stored_config.get("higher_is_better")
        if (old_name, old_dir) != (None, None) and (old_name, old_dir) != (self.metric_name, self.higher_is_better):
            lacking = [r.step for r in self._live() if r.status == "evaluated" and r.metrics.get(self.metric_name) is None]
            if lacking:
                raise StateError(
                    f"{self._state_path} ranks by {old_name!r} (higher_is_better={old_dir}); re-ranking by "
                    f"{self.metric_name!r} is impossible: steps {lacking[:10]} have no {self.metric_name!r} value. "
                    f"Use metric_name={old_name!r}, or re-evaluate those checkpoints with {self.metric_name!r}"
                )
            logger.info("re-ranking %s by %s (higher_is_better=%s), was %s (higher_is_better=%s)",
                        self.dir, self.metric_name, self.higher_is_better, old_name, old_dir)

    def _repair_best_link(self) -> None:
        best_step = self._best_step()
        link = self.dir / store.BEST_LINK
        if best_step is None:
            return
        rel = self._records[best_step].path
        if store.read_pointer(link) != rel:
            store.atomic_symlink(link, rel, target_is_directory=(self.dir / rel).is_dir())
            logger.info("best.pt now points at %s", rel)

    def _write_state(self, best_step: int | None, marker: dict[str, Any] | None) -> None:
        """Persist the state: a full atomic snapshot, or (large states) one journal line."""
        ranking = [r.step for r in self._ranking()[:_HEADER_TOP]]
        header: dict[str, Any] = {
            "schema": STATE_SCHEMA,
            "metric_name": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "save_top_k": self.save_top_k,
            "tracker_config": self.config.to_dict(),
            "best_step": best_step,
            "best_checkpoint": None if best_step is None else self._records[best_step].path,
            "top_k": ranking,
            "best_link": marker,
            "deleting": self._intents,
            "updated_at": time.time(),
        }
        if self._force_full or self._sf.needs_full_write():
            if self._unreadable:
                header["unreadable_checkpoints"] = self._unreadable
            fragments = []
            cache = self._fragments
            for step in sorted(self._records):
                rec = self._records[step]
                hit = cache.get(step)
                if hit is None or hit[0] is not rec:
                    hit = (rec, store.to_strict_json(rec.to_json()))
                    cache[step] = hit
                fragments.append(hit[1])
            if len(cache) > len(self._records):
                for step in [s for s in cache if s not in self._records]:
                    del cache[step]
            self._sf.write_full(store.to_strict_json(header)[:-1] + ',"checkpoints":[\n' + ",\n".join(fragments) + "\n]")
            self._force_full = False
        else:
            changed = [self._records[s].to_json() for s in sorted(self._dirty)]
            self._sf.append(store.to_strict_json({"header": header, "records": changed}))
        self._dirty.clear()
        self._stamp = self._sf.stamp()
        self._stored_config = self.config.to_dict()

    def _write_results(self, force: bool = False) -> None:
        """Rewrite ``best_checkpoint_results.json`` when its content changed (the ranking's first
        ``_HEADER_TOP`` records are listed). Derived from the state, so atomic but not fsynced."""
        doc = results_document(self._summary(limit=_HEADER_TOP), self.config.to_dict(), time.time())
        signature = store.to_strict_json({k: v for k, v in doc.items() if k != "updated_at"})
        if not force and signature == self._results_signature and (self.dir / store.RESULTS_FILE).exists():
            return
        store.atomic_write_json(self.dir / store.RESULTS_FILE, doc, indent=2, durable=False)
        self._results_signature = signature

    def __repr__(self) -> str:
        return (f"BestCheckpointTracker({str(self.dir)!r}, metric_name={self.metric_name!r}, "
                f"higher_is_better={self.higher_is_better}, save_top_k={self.save_top_k})")
