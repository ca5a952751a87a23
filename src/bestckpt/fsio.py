"""Publishing files safely: the one place that writes a file other processes may read.

- :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: a temporary
  file with a unique name (``.bestckpt-tmp.<name>.<pid>.<random>``) created with ``O_EXCL`` and
  ``O_NOFOLLOW`` in the target's directory, ``fsync``, ``os.replace``, ``fsync`` of the directory.
  A reader (or a restart after a crash) sees the old file or the new one, never a torn one; two
  processes writing the same file never share a temporary; a symlink planted at the temporary
  name is never followed.
- Strict JSON: non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"`` (:func:`to_strict_json`, read back by :func:`float_from_json`), never as the bare
  tokens that strict parsers reject.
- Reading files that someone else may have planted: :func:`read_regular` opens without following
  a symlink and without blocking (``O_NOFOLLOW | O_NONBLOCK``), accepts only a regular file and
  reads at most ``max_bytes``; a FIFO, socket, device, directory, symlink or oversized file is an
  error naming the path and the fix, never a hang or an unbounded read. :func:`check_regular` is
  the same check for a file that is about to be opened by someone else (the lock), and
  :func:`open_append` opens a regular file for appending the same way.
- Content hashing: :func:`sha256_file`, :func:`sha256_bytes`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "TEMP_PREFIX",
    "TEMP_FILE_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_writer",
    "read_regular",
    "read_regular_stat",
    "check_regular",
    "describe_kind",
    "open_append",
    "fsync_dir",
    "temp_name",
    "unlink_quiet",
    "to_strict_json",
    "indented_array",
    "indented_object",
    "float_from_json",
    "sha256_file",
    "sha256_bytes",
]

TEMP_PREFIX = ".bestckpt-"  # every temporary name bestckpt creates starts with this
TEMP_FILE_PREFIX = TEMP_PREFIX + "tmp."


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
def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable (no-op where directories cannot be opened)."""
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


def temp_name(directory: str | os.PathLike[str], name: str) -> Path:
    """A fresh temporary path next to ``directory/name`` (unique per process and call)."""
    return Path(directory) / f"{TEMP_FILE_PREFIX}{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def unlink_quiet(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if possible; never raises."""
    try:
        os.unlink(path)
    except OSError:
        pass


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, durable: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; published atomically when the block ends
    (unique temp file created with ``O_EXCL | O_NOFOLLOW``, fsync, rename, dir fsync), discarded
    if it raises. ``durable=False`` skips both fsyncs (still atomic for readers and crashes).

    A directory at ``path`` is refused up front (``IsADirectoryError`` naming the fix): a rename
    could never replace it.
    """
    path = Path(path)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{path} is a directory where bestckpt writes a file; "
                                    "it is not bestckpt's: move it away and retry")
    except FileNotFoundError:
        pass
    tmp = temp_name(path.parent, path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (unique temp file, fsync, rename, dir fsync).

    ``durable=False`` skips both fsyncs: still atomic for readers and process crashes (the rename
    is), not guaranteed across a power loss. For derived files that are rewritten often.
    """
    with atomic_writer(path, durable=durable, mode=mode) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None,
                      durable: bool = True) -> None:
    """:func:`atomic_write_text` of :func:`to_strict_json` (``obj``)."""
    atomic_write_text(path, to_strict_json(obj, indent=indent) + "\n", durable=durable)


# --------------------------------------------------------------------------------------------
# reading (and appending to) files someone else may have planted
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def describe_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a FIFO (named pipe)", "a directory", ...)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def _kind(path: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            pass
    return describe_kind(mode)


def _not_regular(path: Path, mode: int, error: type[OSError]) -> OSError:
    return error(f"{path} is {_kind(path, mode)}, not a regular file: bestckpt reads and writes only regular "
                 "files there (a FIFO or device could block or never end, a link could lead outside the "
                 "directory). It is not bestckpt's: move it away (or remove it) and retry")


def check_regular(path: str | os.PathLike[str], *, error: type[OSError] = OSError) -> os.stat_result | None:
    """``lstat`` of ``path`` if it is a regular file, ``None`` if nothing is there; ``error`` (naming
    the path and the fix) for anything else, a symlink included."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode, error)
    return st


def _open_regular(path: Path, flags: int, error: type[OSError], mode: int = 0o644) -> tuple[int, os.stat_result]:
    """Open ``path`` without following a symlink or blocking; the descriptor and its ``fstat``,
    ``error`` unless it is a regular file."""
    check_regular(path, error=error)  # first, so that a device or FIFO is never even opened
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR) and os.path.lexists(path):
            raise _not_regular(path, os.lstat(path).st_mode, error) from None  # replaced since the check
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode, error)
    return fd, st


def read_regular_stat(path: str | os.PathLike[str], max_bytes: int, *, offset: int = 0,
                      error: type[OSError] = OSError) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file ``path`` from ``offset`` on, and its ``fstat``.

    Opened with ``O_NOFOLLOW | O_NONBLOCK``: a symlink, FIFO, socket, device or directory raises
    ``error`` (naming the path and the fix) instead of being followed, blocking or read forever;
    so does a file larger than ``max_bytes`` (checked before reading, and the read itself stops
    after ``max_bytes``). ``FileNotFoundError`` when nothing is there.
    """
    path = Path(path)
    fd, st = _open_regular(path, os.O_RDONLY, error)
    try:
        if st.st_size > max_bytes:
            raise error(f"{path} holds {st.st_size} bytes, more than the {max_bytes} bytes bestckpt ever "
                        "writes there: it is not bestckpt's file; move it away (or remove it) and retry")
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks, budget = [], max_bytes + 1 - offset
        while budget > 0:
            chunk = os.read(fd, min(budget, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            budget -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if data and offset + len(data) > max_bytes:  # grew while we read it
        raise error(f"{path} grew beyond the {max_bytes} bytes bestckpt ever writes there while being read: "
                    "it is not bestckpt's file; move it away (or remove it) and retry")
    return data, st


def read_regular(path: str | os.PathLike[str], max_bytes: int, *, error: type[OSError] = OSError) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``): :func:`read_regular_stat`."""
    return read_regular_stat(path, max_bytes, error=error)[0]


def open_append(path: str | os.PathLike[str], *, error: type[OSError] = OSError, mode: int = 0o644) -> int:
    """A descriptor appending to the regular file ``path`` (created if missing), opened without
    following a symlink or blocking; ``error`` for anything but a regular file."""
    return _open_regular(Path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, error, mode)[0]


# --------------------------------------------------------------------------------------------
# content hashing
def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (weight files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
