"""The tracker's persisted state: :class:`Record`, the state schema, and :class:`TrackerState`.

:class:`TrackerState` is the in-memory copy of ``best_checkpoints.json`` (+ its journal): every
record by step, the set of live steps (not pruned, not refused) that retention looks at, the
records changed since the last write (the next journal entry), the recorded deletion intents and
the stored tracker config. It parses a snapshot, applies journal transactions, and encodes a full
snapshot or one journal line. Every byte it reads or writes goes through
:class:`~bestckpt.tracking.journal.StateFile`; deciding *when* to reload, and reconciling with the
checkpoints on disk, is :mod:`bestckpt.tracking.reconcile`'s job.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestckpt import errors, fsio
from bestckpt.errors import StateError
from bestckpt.tracking import entries, journal, layout
from bestckpt.tracking.policies import STATUSES
from bestckpt.tracking.values import (
    check_epoch,
    check_step,
    clean_metrics,
    metric_value,
)

__all__ = ["Record", "StateError", "STATE_SCHEMA", "STATUSES", "HEADER_TOP", "TrackerState", "check_step",
           "clean_metrics"]

logger = logging.getLogger(__name__)

STATE_SCHEMA = "bestckpt.state/1"
HEADER_TOP = 100  # the state header's "top_k" lists at most this many steps (the ranking's head)
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # fsio.to_strict_json's spellings


@dataclass(frozen=True)
class Record:
    """One checkpoint known to the tracker.

    ``path`` is relative to the checkpoint directory; ``metrics`` maps metric names to floats
    (``None`` where a value was unusable); ``status`` is ``pending`` (saved, evaluation to come),
    ``saved`` (not to be evaluated), ``evaluated`` or ``failed``; ``pruned`` once retention deleted
    it (or it vanished from disk). ``seq`` orders the directory's saves (the latest save has the
    highest; records of older states have 0, i.e. step order) and ``file_id`` is the checkpoint
    file's ``(mtime_ns, size)`` when it was registered (``None`` for directories): together they
    tell a new save from the same checkpoint registered or scored again
    (:mod:`bestckpt.tracking.saveorder`). In JSON, ``path`` and ``time`` are stored under the
    original's keys ``checkpoint_path`` and ``timestamp``.
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
    seq: int = 0
    file_id: tuple[int, int] | None = None

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
        out["seq"] = self.seq
        if self.file_id is not None:
            out["file_id"] = list(self.file_id)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Record:
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
        try:
            epoch = check_epoch(epoch)
        except ValueError:  # informational only: never worth dropping a record (maybe the best) over
            logger.warning("record of step %d has epoch %r, not an int >= 0: read as None (edit %s to fix it)",
                           step, epoch, layout.STATE_FILE)
            epoch = None
        raw_metrics = data.get("metrics") or {}
        if not isinstance(raw_metrics, dict):
            raise ValueError(f"record of step {step} has non-object metrics {raw_metrics!r}")
        try:  # the call's coercion, after decoding the strict-JSON spellings of NaN and infinities
            metrics = {k: metric_value(k, _NONFINITE.get(v, v) if isinstance(v, str) else v)
                       for k, v in raw_metrics.items()}
        except ValueError as exc:
            raise ValueError(f"record of step {step}: {exc}") from None
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
            seq=_count(data.get("seq")) or 0, file_id=_file_id(data.get("file_id")),
        )


def _count(value: Any) -> int | None:
    """``value`` if it is an int >= 0 (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _file_id(value: Any) -> tuple[int, int] | None:
    """A stored ``file_id`` (two ints), or ``None`` when absent or malformed (then only the path counts)."""
    if isinstance(value, list) and len(value) == 2 and all(_count(v) is not None for v in value):
        return (value[0], value[1])
    return None


#: ``info`` key of the results attached to a record after scoring (:mod:`~bestckpt.tracking.attached`)
RESULTS_KEY = "results"


def _annotated(record: Record) -> bool:
    value = record.info.get(RESULTS_KEY)
    return isinstance(value, dict) and bool(value)


class TrackerState:
    """The records of one checkpoint directory and the state header fields, as last read or written.

    ``version`` is bumped at every change so that ranking computations can be memoized per version.
    ``stamp`` is the ``StateFile`` stamp of what memory reflects (``None``: reread everything).
    """

    def __init__(self, directory: Path, sf: journal.StateFile) -> None:
        self.dir = Path(directory)
        self.sf = sf
        self.path = sf.path
        self.records: dict[int, Record] = {}
        self.live_steps: set[int] = set()  # not pruned, not refused: what retention looks at
        self.live_paths: dict[str, int] = {}  # path -> step of the live records (tracking.aliasing)
        self.dirty: set[int] = set()  # records changed since the last write (journal entries)
        self.version = 0  # bumped at every change
        self.generation = 0  # bumped when the whole record set is replaced
        self.touched: set[int] = set()  # steps put since the last take_touched() (incremental ranking)
        self.annotated: set[int] = set()  # steps whose record carries attached results (the summary's "results")
        self.force_full = False  # the next write must be a full snapshot
        self.unreadable: list[Any] = []  # stored entries we could not parse: kept, written back
        self.intents: list[dict[str, Any]] = []  # deletions decided, maybe not yet done
        self.refused: dict[int, str] = {}  # records whose path escapes the directory
        self.stored_config: dict[str, Any] = {}
        self.stamp: tuple[Any, Any] | None = None
        self.next_seq = 1  # the save counter: the next save's seq (header field ``next_seq``)
        self.newest: tuple[int, int] | None = None  # (seq, step) of the most recent save, pruned or not
        self._fragments: dict[int, tuple[Record, str]] = {}  # cached JSON of unchanged records

    # ------------------------------------------------------------------ records
    def put(self, record: Record, *, dirty: bool = True) -> None:
        old = self.records.get(record.step)
        if old is not None and self.live_paths.get(old.path) == old.step:
            del self.live_paths[old.path]
        self.records[record.step] = record
        if record.pruned or record.step in self.refused:
            self.live_steps.discard(record.step)
        else:
            self.live_steps.add(record.step)
            self.live_paths[record.path] = record.step
        if dirty:
            self.dirty.add(record.step)
        self.touched.add(record.step)
        (self.annotated.add if _annotated(record) else self.annotated.discard)(record.step)
        self.version += 1
        key = (record.seq, record.step)
        if self.newest is None or key > self.newest:
            self.newest = key
        self.next_seq = max(self.next_seq, record.seq + 1)

    def set_records(self, records: dict[int, Record]) -> None:
        self.records = records
        self.live_steps = {s for s, r in records.items() if not r.pruned and s not in self.refused}
        self.annotated = {s for s, r in records.items() if _annotated(r)}
        self.newest = max(((r.seq, s) for s, r in records.items()), default=None)
        self.next_seq = 1 + (self.newest[0] if self.newest else 0)
        self.live_paths = {records[s].path: s for s in sorted(self.live_steps)}
        self.dirty = set()
        self.touched = set()
        self.generation += 1
        self.version += 1

    def take_seq(self) -> int:
        """The next value of the save counter (a new save)."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def take_touched(self) -> set[int]:
        """Steps put since the last call (within one ``generation``), and forget them."""
        touched, self.touched = self.touched, set()
        return touched

    def live(self) -> list[Record]:
        return [self.records[s] for s in self.live_steps]

    def forget(self) -> None:
        """Drop everything read (the state was lost or is unreadable); the next write is full."""
        self.refused = {}
        self.set_records({})
        self.unreadable, self.intents = [], []
        self.stored_config = {}
        self.stamp = None
        self.sf.journal_id = None
        self.force_full = True

    def check_confined(self, rec: Record) -> None:
        """Refuse (never delete, never rank) a stored path outside the directory or naming our own files."""
        try:
            entries.confine(self.dir, rec.path)
            layout.check_not_own(rec.path, rec.step)
        except errors.UnsafePathError as exc:
            self.refused[rec.step] = str(exc)
            logger.error("state entry of step %d refused: %s (never deleted, never best)", rec.step, exc)
        else:
            self.refused.pop(rec.step, None)

    # ------------------------------------------------------------------ decoding
    def parse(self, raw: bytes) -> dict[str, Any]:
        """Adopt the snapshot ``raw``; ``ValueError``/``UnicodeDecodeError`` if it is unreadable,
        :class:`StateError` if a newer bestckpt wrote it."""
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        schema = data.get("schema")
        if schema is None:
            if not isinstance(data.get("checkpoints"), list) or "metric_name" not in data:
                raise ValueError("not a bestckpt state file (no 'schema', no 'checkpoints' list)")
            logger.info("%s is in the original tracker's format; importing it", self.path)
            self.force_full = True
        elif isinstance(schema, str) and schema.startswith("bestckpt.state/") and schema != STATE_SCHEMA:
            raise StateError(f"{self.path} has schema {schema!r}, newer than this bestckpt ({STATE_SCHEMA}); "
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
                logger.error("%s: unreadable record kept aside (%s); its checkpoint is never deleted meanwhile: "
                             "edit or remove that entry of %s: %r", self.path, exc, self.path.name, entry)
                unreadable.append(entry)
                continue
            if schema is None:  # the original stored absolute or cwd-relative paths
                rec = dataclasses.replace(rec, path=layout.legacy_relpath(self.dir, rec.path))
            if rec.step in records:
                logger.warning("%s lists step %d twice; the later entry wins", self.path, rec.step)
            records[rec.step] = rec
        self.refused = {}
        for rec in records.values():
            self.check_confined(rec)
        self.set_records(records)
        self.unreadable = unreadable
        self.apply_header(data)
        self.sf.journal_id = data.get("journal_id") if isinstance(data.get("journal_id"), str) else None
        return data

    def apply_header(self, header: Mapping[str, Any]) -> None:
        intents = header.get("deleting") or []
        self.intents = [i for i in intents if isinstance(i, dict)] if isinstance(intents, list) else []
        self.next_seq = max(self.next_seq, _count(header.get("next_seq")) or 1)
        cfg = header.get("tracker_config")
        if isinstance(cfg, dict):
            self.stored_config = dict(cfg)
        elif "metric_name" in header:
            self.stored_config = {"metric_name": header.get("metric_name"),
                                  "higher_is_better": header.get("higher_is_better")}

    def apply_entry(self, entry: Mapping[str, Any]) -> None:
        """One journal transaction: its header fields and the records it changed."""
        header = entry.get("header")
        if isinstance(header, dict):
            self.apply_header(header)
        for raw in entry.get("records") or []:
            try:
                rec = Record.from_json(raw)
            except ValueError as exc:
                logger.error("%s: unreadable record kept aside (%s); its checkpoint is never deleted meanwhile: "
                             "edit or remove that entry of %s: %r", self.sf.journal_path, exc, self.path.name, raw)
                self.unreadable.append(raw)
                continue
            self.check_confined(rec)
            self.put(rec, dirty=False)

    # ------------------------------------------------------------------ encoding
    def write(self, header: dict[str, Any], stored_config: dict[str, Any]) -> None:
        """Persist: a full atomic snapshot (small states, or when a compaction is due), else one
        journal line with ``header`` and the records changed since the last write."""
        if self.force_full or self.sf.needs_full_write():
            if self.unreadable:
                header["unreadable_checkpoints"] = self.unreadable
            fragments = []
            cache = self._fragments
            for step in sorted(self.records):
                rec = self.records[step]
                hit = cache.get(step)
                if hit is None or hit[0] is not rec:
                    hit = (rec, fsio.to_strict_json(rec.to_json()))
                    cache[step] = hit
                fragments.append(hit[1])
            if len(cache) > len(self.records):
                for step in [s for s in cache if s not in self.records]:
                    del cache[step]
            self.sf.write_full(fsio.to_strict_json(header)[:-1] + ',"checkpoints":[\n' + ",\n".join(fragments) + "\n]")
            self.force_full = False
        else:
            changed = [self.records[s].to_json() for s in sorted(self.dirty)]
            self.sf.append(fsio.to_strict_json({"header": header, "records": changed}))
        self.dirty.clear()
        self.stamp = self.sf.stamp()
        self.stored_config = stored_config
