"""Entries of the checkpoint directory: confinement, inspection and the only deletion there is.

- :func:`confine`: ``root / relpath`` only if it stays inside ``root`` (lexically and after
  resolving its parent); escapes raise :class:`~bestckpt.errors.UnsafePathError`.
- :func:`delete_entry`: deletes one checkpoint entry; symlinks are never followed (a symlinked
  checkpoint loses its link, never its target); a directory is renamed aside first, so a crash
  mid-removal never leaves a half-deleted checkpoint under a real name; the directory is fsynced,
  so a power loss cannot bring the entry back.
- :func:`cleanup_temporaries`: removes what our own interrupted writes and deletions leave
  behind (names start with ``.bestckpt-``).
- :func:`entry_stat`, :func:`move_aside`: what reconciling needs.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from bestckpt.errors import UnsafePathError
from bestckpt.fsio import TEMP_FILE_PREFIX, TEMP_PREFIX, fsync_dir

__all__ = ["confine", "delete_entry", "cleanup_temporaries", "entry_stat", "move_aside",
           "UnsafePathError"]

logger = logging.getLogger(__name__)

_DELETING = TEMP_PREFIX + "deleting."


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
    The directory is fsynced once the name is gone: the state already says the entry is deleted,
    and a power loss must not bring it back behind the state's back.
    """
    full = confine(root, relpath)
    if full.is_symlink() or full.is_file():
        try:
            os.unlink(full)
        except FileNotFoundError:
            return False
        fsync_dir(full.parent)
        return True
    if full.is_dir():
        doomed = full.parent / f"{_DELETING}{full.name}.{uuid.uuid4().hex[:8]}"
        os.replace(full, doomed)
        fsync_dir(full.parent)
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
        if not (name.startswith(TEMP_FILE_PREFIX) or name.startswith(_DELETING)):
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
