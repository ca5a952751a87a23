"""The state file on disk: ``best_checkpoints.json`` (a snapshot) plus an append-only journal.

:class:`StateFile` reads and writes the bytes; :func:`read_state` gives tools the current state
as one dict. What the records mean is :mod:`bestckpt.tracking.state`'s business.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from bestckpt import fsio
from bestckpt.errors import UnsafeFileError
from bestckpt.tracking.layout import JOURNAL_FILE, STATE_FILE, STATE_MAX_BYTES

__all__ = ["StateFile", "read_state"]


class StateFile:
    """``best_checkpoints.json`` (a full snapshot) plus, for large states, an append-only journal.

    Rewriting and fsyncing the whole snapshot at every call grows with the run's history (figures:
    ``docs/tracker-performance.md``), so once the snapshot exceeds ``compact_bytes`` each transaction
    is appended as one JSON line to ``best_checkpoints.journal`` (one small fsync) and the snapshot
    is rewritten only when the journal reaches a quarter of its size. Small states (ordinary runs)
    are always written as a full snapshot, so ``best_checkpoints.json`` alone is current; for large
    states readers must apply the journal (:func:`read_state` does).

    The journal's first line names the snapshot it extends (``journal_id``); a journal left over
    from before a compaction names another id and is ignored, then removed. A torn last line
    (a crash mid-append) is ignored: its transaction had no effect yet, because nothing is deleted
    or relinked before the line is fsynced; the writer truncates it before appending again.

    Both files are read with :func:`bestckpt.fsio.read_regular_stat` (at most
    :data:`~bestckpt.tracking.layout.STATE_MAX_BYTES`) and appended to with
    :func:`bestckpt.fsio.open_append`: a FIFO, device, directory or symlink in their place raises
    :class:`~bestckpt.errors.UnsafeFileError` naming the file and the fix, never blocks, is never
    read without bound and never followed outside the directory.
    """

    def __init__(self, directory: Path, compact_bytes: int = 256 * 1024) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.journal_path = self.directory / JOURNAL_FILE
        self.compact_bytes = compact_bytes
        self.journal_id: str | None = None  # id of the snapshot last read or written
        self.snapshot_size = 0
        self.journal_offset = 0  # bytes of valid journal read or written (end of the last full line)
        self.journal_ino: int | None = None
        self.torn = False

    # -- stamps: what tells a reader that another process wrote --------------------------------
    def stamp(self) -> tuple[Any, Any]:
        return (_stat_stamp(self.path), _stat_stamp(self.journal_path))

    # -- reading --------------------------------------------------------------------------------
    def read_snapshot(self) -> tuple[bytes, tuple[int, int, int]] | None:
        """Raw snapshot bytes and their stamp, or ``None`` if there is no snapshot."""
        try:
            raw, st = fsio.read_regular_stat(self.path, STATE_MAX_BYTES, error=UnsafeFileError)
        except FileNotFoundError:
            return None
        self.snapshot_size = len(raw)
        return raw, (st.st_mtime_ns, st.st_size, st.st_ino)

    def read_journal(self, journal_id: str | None, *, incremental: bool = False) -> list[dict[str, Any]] | None:
        """Transactions of the journal extending snapshot ``journal_id`` (from the last offset if
        ``incremental``). ``None`` when an incremental read is impossible (journal replaced)."""
        start = self.journal_offset if incremental else 0
        try:
            raw, st = fsio.read_regular_stat(self.journal_path, STATE_MAX_BYTES, offset=start, error=UnsafeFileError)
        except FileNotFoundError:
            if incremental and self.journal_ino is not None:
                return None
            self.journal_ino, self.journal_offset, self.torn = None, 0, False
            return []
        if incremental and (st.st_ino != self.journal_ino or st.st_size < self.journal_offset):
            return None
        self.journal_ino = st.st_ino
        lines = raw.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: empty, or a torn line
        self.torn = bool(tail)
        entries: list[dict[str, Any]] = []
        offset = start
        for i, line in enumerate(lines):
            offset += len(line) + 1
            try:
                entry = json.loads(line)
            except ValueError:
                raise ValueError(f"{self.journal_path} line {i + 1} is corrupt") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{self.journal_path} line {i + 1} is not an object")
            if start == 0 and i == 0:
                if entry.get("journal_id") != journal_id:  # a leftover from before a compaction
                    self.journal_offset = 0
                    self.torn = True  # forces a rewrite before anything is appended
                    return []
                continue
            entries.append(entry)
        self.journal_offset = offset
        return entries

    # -- writing (under the lock) -----------------------------------------------------------------
    def needs_full_write(self) -> bool:
        if self.journal_id is None or self.torn or self.snapshot_size <= self.compact_bytes:
            return True
        return self.journal_offset > max(self.compact_bytes, self.snapshot_size // 4, 4096)

    def write_full(self, text_without_id: str) -> None:
        """Atomically replace the snapshot (``text_without_id`` is a JSON object missing its
        closing brace) under a fresh journal id, then drop the old journal."""
        self.journal_id = uuid.uuid4().hex
        text = text_without_id + f',"journal_id":"{self.journal_id}"}}\n'
        fsio.atomic_write_text(self.path, text)
        self.snapshot_size = len(text.encode("utf-8"))
        if os.path.lexists(self.journal_path):
            os.unlink(self.journal_path)
        self.journal_offset, self.journal_ino, self.torn = 0, None, False

    def append(self, entry_json: str) -> None:
        """Append one transaction line and fsync it (creating the journal if needed)."""
        assert self.journal_id is not None and not self.torn and "\n" not in entry_json
        new = not os.path.lexists(self.journal_path)
        fd = fsio.open_append(self.journal_path, error=UnsafeFileError)
        try:
            data = entry_json.encode("utf-8") + b"\n"
            if new:
                data = (json.dumps({"journal_id": self.journal_id}) + "\n").encode("utf-8") + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self.journal_ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        if new:
            fsio.fsync_dir(self.directory)
        self.journal_offset += len(data)


def _stat_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)  # what is at the name: a link planted there is a change
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_state(directory: Path) -> dict[str, Any] | None:
    """The current state of ``directory`` as one dict (snapshot with its journal applied):
    for tools and checkers that read the state without a tracker. ``None`` if there is none;
    ``ValueError`` if it does not parse."""
    sf = StateFile(Path(directory))
    snap = sf.read_snapshot()
    if snap is None:
        return None
    data = json.loads(snap[0].decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("state is not a JSON object")
    entries = sf.read_journal(data.get("journal_id")) or []
    if entries:
        records = {r.get("step"): r for r in data.get("checkpoints", []) if isinstance(r, dict)}
        for entry in entries:
            data.update(entry.get("header", {}))
            for rec in entry.get("records", []):
                records[rec.get("step")] = rec
        data["checkpoints"] = [records[k] for k in sorted(records, key=lambda s: (s is None, s))]
    return data
