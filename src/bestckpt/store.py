"""The only module that does filesystem bookkeeping for the tracker.

- :func:`atomic_write_text` / :func:`atomic_write_json`: temporary file in the same directory,
  ``fsync``, ``os.replace``, then ``fsync`` of the directory, so a reader (or a restart after a
  crash) sees the old file or the new one, never a torn one. JSON is strict: non-finite floats
  are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (see :func:`to_strict_json`
  and :func:`float_from_json`), never as the bare tokens that strict parsers reject.
- :func:`atomic_symlink`: ``best.pt`` is a *relative* symlink replaced by creating a temporary link
  and renaming it over the old one (never unlink-then-create). Where symlinks are impossible
  (``os.symlink`` raises ``OSError``/``NotImplementedError``: some Windows setups, some network or
  FAT filesystems) we write a small pointer file ``best.pt.txt`` holding the relative path instead,
  atomically. We do not copy the checkpoint: checkpoints can be many GB and a copy doubles disk use.
- :func:`lock`: a cross-process lock (``filelock``; flock-based, released by the kernel even when the
  holder is SIGKILLed) on ``best_checkpoints.json.lock``.
- :func:`confine` / :func:`delete_entry`: deletion only of entries inside the checkpoint directory;
  paths are checked lexically and after resolving their parent, symlinks are never followed (a
  symlinked checkpoint loses its link, never its target), escapes raise :class:`UnsafePathError`.
- :func:`cleanup_temporaries`: removes the temporary files and half-deleted directories our own
  writes can leave behind after a crash (names start with ``.bestckpt-``).
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import filelock

__all__ = [
    "STATE_FILE",
    "RESULTS_FILE",
    "LOCK_FILE",
    "BEST_LINK",
    "POINTER_SUFFIX",
    "TEMP_PREFIX",
    "UnsafePathError",
    "StateLockTimeout",
    "to_strict_json",
    "indented_array",
    "indented_object",
    "float_from_json",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_symlink",
    "read_pointer",
    "lock",
    "confine",
    "delete_entry",
    "cleanup_temporaries",
    "fsync_dir",
    "JOURNAL_FILE",
    "StateFile",
    "read_state",
    "list_names",
    "entry_stat",
    "move_aside",
    "legacy_relpath",
    "checkpoint_relpath",
]

logger = logging.getLogger(__name__)

STATE_FILE = "best_checkpoints.json"
RESULTS_FILE = "best_checkpoint_results.json"
LOCK_FILE = STATE_FILE + ".lock"
BEST_LINK = "best.pt"
POINTER_SUFFIX = ".txt"  # best.pt.txt: the fallback where symlinks are impossible
TEMP_PREFIX = ".bestckpt-"  # every temporary name we create starts with this
_TMP = TEMP_PREFIX + "tmp."
_DELETING = TEMP_PREFIX + "deleting."


class UnsafePathError(ValueError):
    """A path that would escape the checkpoint directory (``..``, absolute, through a symlink)."""


class StateLockTimeout(TimeoutError):
    """The state lock could not be taken in time (another process holds it)."""


# --------------------------------------------------------------------------------------------
# strict JSON
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _encode(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def to_strict_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text: non-finite floats become ``"NaN"``/``"Infinity"``/``"-Infinity"`` strings."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(_encode(obj), allow_nan=False, ensure_ascii=False, indent=indent, separators=separators)


def indented_array(items: Sequence[str], indent: int = 2) -> str:
    """``to_strict_json(list, indent=indent)`` assembled from its items, each already encoded by
    ``to_strict_json(item, indent=indent)`` (lets a caller reuse the text of unchanged items:
    nested text is the top-level text with every line break followed by one more indent)."""
    if not items:
        return "[]"
    pad = "\n" + " " * indent
    return "[" + pad + ("," + pad).join(text.replace("\n", pad) for text in items) + "\n]"


def indented_object(members: Sequence[tuple[str, str]], indent: int = 2) -> str:
    """``to_strict_json(dict, indent=indent)`` assembled from ``(key, encoded value)`` pairs
    (values encoded as in :func:`indented_array`)."""
    if not members:
        return "{}"
    pad = "\n" + " " * indent
    return "{" + pad + ("," + pad).join(
        f"{to_strict_json(str(key))}: {text.replace(chr(10), pad)}" for key, text in members) + "\n}"


def float_from_json(value: Any) -> float | None:
    """Inverse of the float encoding: numbers and the three strings -> float; ``None`` stays ``None``.

    Raises ``ValueError`` for anything else (a foreign value in a metrics field).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    raise ValueError(f"expected a number or one of {sorted(_NONFINITE)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# atomic writes
def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(directory: Path, name: str) -> Path:
    return directory / f"{_TMP}{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically and durably (temp file, fsync, rename, dir fsync).

    ``durable=False`` skips both fsyncs: still atomic for readers and process crashes (the rename
    is), not guaranteed across a power loss. For derived files that are rewritten at every call.
    """
    path = Path(path)
    tmp = _temp_name(path.parent, path.name)
    data = text.encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = None, durable: bool = True) -> None:
    """:func:`atomic_write_text` of :func:`to_strict_json` (``obj``)."""
    atomic_write_text(path, to_strict_json(obj, indent=indent) + "\n", durable=durable)


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# best.pt
def atomic_symlink(link: Path, target: str, *, target_is_directory: bool = False) -> str:
    """Point ``link`` at the relative ``target`` atomically; returns ``"symlink"`` or ``"pointer"``.

    A temporary symlink is created next to ``link`` and renamed over it, so ``link`` always
    resolves to the old or the new target. If ``link`` exists and is a real file or directory
    (not a symlink) it is not ours to replace: :class:`FileExistsError` says so. Where symlinks
    are impossible, the relative target is written atomically to ``<link>.txt`` instead.
    """
    link = Path(link)
    if os.path.isabs(target) or ".." in Path(target).parts:
        raise UnsafePathError(f"best link target must be relative and inside the directory, got {target!r}")
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        raise FileExistsError(
            f"{link} exists and is not a symlink; bestckpt will not overwrite it. "
            f"Move it away so that {link.name} can point at the best checkpoint."
        )
    tmp = _temp_name(link.parent, link.name)
    try:
        os.symlink(target, tmp, target_is_directory=target_is_directory)
    except (OSError, NotImplementedError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT):
            raise
        logger.warning("symlinks are not available in %s (%s); writing pointer file %s%s instead",
                       link.parent, exc, link.name, POINTER_SUFFIX)
        atomic_write_text(link.with_name(link.name + POINTER_SUFFIX), target + "\n")
        return "pointer"
    try:
        os.replace(tmp, link)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    fsync_dir(link.parent)
    return "symlink"


def read_pointer(link: Path) -> str | None:
    """The relative target of ``best.pt`` (symlink, else pointer file), or ``None`` if neither exists."""
    link = Path(link)
    if link.is_symlink():
        return os.readlink(link)
    pointer = link.with_name(link.name + POINTER_SUFFIX)
    if pointer.is_file():
        return pointer.read_text(encoding="utf-8").strip() or None
    return None


# --------------------------------------------------------------------------------------------
# lock
def lock(directory: Path, timeout: float = 600.0) -> filelock.BaseFileLock:
    """The cross-process lock of a checkpoint directory (reentrant within one lock object)."""
    return filelock.FileLock(str(Path(directory) / LOCK_FILE), timeout=timeout)


# --------------------------------------------------------------------------------------------
# confined deletion
def confine(root: Path, relpath: str) -> Path:
    """``root / relpath`` after checking that it stays inside ``root``.

    Refused (``UnsafePathError``): absolute paths, ``..`` components, the root itself, and paths
    whose parent directory resolves outside ``root`` (a symlinked parent). The entry itself may be a
    symlink: callers must not follow it.
    """
    root = Path(root)
    rel = Path(relpath)
    if rel.is_absolute() or relpath.startswith(("/", "\\")):
        raise UnsafePathError(f"path {relpath!r} is absolute; only paths inside {root} are handled")
    if not rel.parts or any(part in ("..", "") for part in rel.parts) or rel.parts == (".",):
        raise UnsafePathError(f"path {relpath!r} escapes or is not an entry of {root}")
    full = root / rel
    real_root = root.resolve()
    real_parent = full.parent.resolve()
    if real_parent != real_root and real_root not in real_parent.parents:
        raise UnsafePathError(f"path {relpath!r} leads outside {root} (through a symlinked directory)")
    return full


def delete_entry(root: Path, relpath: str) -> bool:
    """Delete the checkpoint entry ``relpath`` inside ``root``; ``False`` if it was already gone.

    A symlink is unlinked (its target is never touched). A directory is first renamed to a
    ``.bestckpt-deleting.*`` name (atomic), then removed, so a crash mid-removal leaves no
    half-deleted checkpoint under a real name; the leftover is removed by :func:`cleanup_temporaries`.
    No directory fsync: the deletion was recorded (fsynced) in the state before, so it is redone
    if a power loss undoes it, and the next fsync of the state commits it (ext4 orders metadata).
    """
    full = confine(root, relpath)
    if full.is_symlink() or full.is_file():
        try:
            os.unlink(full)
        except FileNotFoundError:
            return False
        return True
    if full.is_dir():
        doomed = full.parent / f"{_DELETING}{full.name}.{uuid.uuid4().hex[:8]}"
        os.replace(full, doomed)
        shutil.rmtree(doomed)
        return True
    if os.path.lexists(full):  # sockets, fifos...: not a checkpoint we know how to handle
        raise UnsafePathError(f"{full} is neither a file, a directory nor a symlink; not deleting it")
    return False


def cleanup_temporaries(root: Path) -> list[str]:
    """Remove leftovers of our own interrupted writes/deletions in ``root`` (call under the lock)."""
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(_TMP) or name.startswith(_DELETING)):
            continue
        full = Path(root) / name
        try:
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed.append(name)
        except OSError as exc:
            logger.warning("could not remove leftover temporary %s: %s", full, exc)
    return removed


# --------------------------------------------------------------------------------------------
# directory inspection and recovery (what reconciling the state with the disk needs)
def list_names(root: Path) -> list[str]:
    """Names in ``root``, sorted (empty if it cannot be listed)."""
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []


def entry_stat(root: Path, relpath: str) -> os.stat_result | None:
    """``lstat`` of the entry ``relpath`` in ``root`` (symlinks not followed), ``None`` if it is gone."""
    try:
        return os.lstat(Path(root) / relpath)
    except (FileNotFoundError, NotADirectoryError):
        return None


def move_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename an unusable file to ``<name>.<tag>-<time>-<pid>`` next to it (never lose it) and
    make the rename durable; returns the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    return aside


def checkpoint_relpath(root: Path, path: str | Path | None, default: str, step: int, *, must_exist: bool) -> str:
    """``path`` as a path relative to the checkpoint directory ``root`` (``default``, the step's
    file name, when ``path`` is ``None``).

    Absolute paths must lie inside the directory. A relative path is taken relative to the
    current directory when that lands inside the checkpoint directory, else relative to it.
    """
    root = Path(root)
    if path is None:
        rel = default
    else:
        p = Path(path)
        real_root = root.resolve()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
        rel = None
        for cand in candidates:
            parent = cand.parent.resolve()
            if parent == real_root or real_root in parent.parents:
                rel = os.path.relpath(parent / cand.name, real_root)
                break
        if rel is None or rel in (".", "") or rel.startswith(".."):
            raise ValueError(
                f"checkpoint path {str(path)!r} is not inside checkpoint_dir {root}; save checkpoints into "
                "that directory (or create the tracker on the directory they are saved in)"
            )
    confine(root, rel)
    if must_exist and not os.path.lexists(root / rel):
        raise FileNotFoundError(
            f"checkpoint {root / rel} of step {step} does not exist; call the tracker after the checkpoint "
            "is completely saved (and pass the path it was saved to)"
        )
    return rel


def legacy_relpath(root: Path, path: str) -> str:
    """A path stored by the original tracker (absolute, cwd-relative or relative to ``root``) as a
    path relative to ``root`` when it names an existing entry inside ``root``; else unchanged."""
    p = Path(path)
    root = Path(root)
    real_root = root.resolve()
    for cand in ([p] if p.is_absolute() else [root / p, Path.cwd() / p, root / p.name]):
        try:
            parent = cand.parent.resolve()
        except OSError:
            continue
        if (parent == real_root or real_root in parent.parents) and os.path.lexists(parent / cand.name):
            return os.path.relpath(parent / cand.name, real_root)
    return path


# --------------------------------------------------------------------------------------------
# the state file: snapshot + append-only journal
JOURNAL_FILE = "best_checkpoints.journal"


class StateFile:
    """``best_checkpoints.json`` (a full snapshot) plus, for large states, an append-only journal.

    Rewriting a multi-MB snapshot and fsyncing it at every call costs tens of milliseconds, so once
    the snapshot exceeds ``compact_bytes`` each transaction is appended as one JSON line to
    ``best_checkpoints.journal`` (one fsync of a few hundred bytes) and the snapshot is rewritten
    only when the journal reaches a quarter of its size. Small states (every ordinary run: a few
    hundred records) are always written as a full snapshot, so ``best_checkpoints.json`` alone is
    current; for large states readers must apply the journal (:func:`read_state` does).

    The journal's first line names the snapshot it extends (``journal_id``); a journal left over
    from before a compaction names another id and is ignored, then removed. A torn last line
    (a crash mid-append) is ignored: its transaction had no effect yet, because nothing is deleted
    or relinked before the line is fsynced; the writer truncates it before appending again.
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
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                raw = fh.read()
        finally:
            os.close(fd)
        self.snapshot_size = len(raw)
        return raw, (st.st_mtime_ns, st.st_size, st.st_ino)

    def read_journal(self, journal_id: str | None, *, incremental: bool = False) -> list[dict[str, Any]] | None:
        """Transactions of the journal extending snapshot ``journal_id`` (from the last offset if
        ``incremental``). ``None`` when an incremental read is impossible (journal replaced)."""
        try:
            fd = os.open(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            if incremental and self.journal_ino is not None:
                return None
            self.journal_ino, self.journal_offset, self.torn = None, 0, False
            return []
        try:
            st = os.fstat(fd)
            if incremental and (st.st_ino != self.journal_ino or st.st_size < self.journal_offset):
                return None
            start = self.journal_offset if incremental else 0
            os.lseek(fd, start, os.SEEK_SET)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                raw = fh.read()
        finally:
            os.close(fd)
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
        atomic_write_text(self.path, text)
        self.snapshot_size = len(text.encode("utf-8"))
        if os.path.lexists(self.journal_path):
            os.unlink(self.journal_path)
        self.journal_offset, self.journal_ino, self.torn = 0, None, False

    def append(self, entry_json: str) -> None:
        """Append one transaction line and fsync it (creating the journal if needed)."""
        assert self.journal_id is not None and not self.torn and "\n" not in entry_json
        new = not os.path.lexists(self.journal_path)
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
            fsync_dir(self.directory)
        self.journal_offset += len(data)


def _stat_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
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
