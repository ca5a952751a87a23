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
- Content hashing: :func:`sha256_file`, :func:`sha256_bytes`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_PREFIX",
    "TEMP_FILE_PREFIX",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (unique temp file, fsync, rename, dir fsync).

    ``durable=False`` skips both fsyncs: still atomic for readers and process crashes (the rename
    is), not guaranteed across a power loss. For derived files that are rewritten often.
    """
    path = Path(path)
    tmp = temp_name(path.parent, path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quiet(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None,
                      durable: bool = True) -> None:
    """:func:`atomic_write_text` of :func:`to_strict_json` (``obj``)."""
    atomic_write_text(path, to_strict_json(obj, indent=indent) + "\n", durable=durable)


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
