"""``best.pt``: a relative symlink to the best checkpoint, swapped atomically.

A temporary link is created next to ``best.pt`` and renamed over it (never unlink-then-create),
so ``best.pt`` always resolves to the old or the new target. Where symlinks are impossible
(``os.symlink`` raises: some Windows setups, some network or FAT filesystems) a small pointer file
``best.pt.txt`` holding the relative path is written atomically instead. The checkpoint is never
copied: checkpoints can be many GB. Every change of ``best.pt`` is made durable (directory fsync).

``best.pt.txt`` is read as an untrusted pointer (:func:`bestckpt.tracking.layout.read_pointer_file`):
a binary file, FIFO, device or link there is ignored with a warning (and replaced where bestckpt
writes the pointer file), so it never wedges updates.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from bestckpt.errors import UnsafePathError
from bestckpt.fsio import atomic_write_text, fsync_dir, temp_name, unlink_quiet
from bestckpt.tracking.layout import POINTER_SUFFIX, read_pointer_file

__all__ = ["atomic_symlink", "read_pointer", "remove_link"]

logger = logging.getLogger(__name__)


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
    tmp = temp_name(link.parent, link.name)
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
        unlink_quiet(tmp)
        raise
    fsync_dir(link.parent)
    return "symlink"


def read_pointer(link: Path) -> str | None:
    """The relative target of ``best.pt`` (symlink, else pointer file), or ``None`` if neither exists."""
    link = Path(link)
    if link.is_symlink():
        return os.readlink(link)
    return read_pointer_file(link.with_name(link.name + POINTER_SUFFIX),
                             f"bestckpt points {link.name} (or rewrites this file) at the next change of the best")


def remove_link(link: Path) -> None:
    """Remove the symlink ``link`` durably (nothing left to point at)."""
    os.unlink(link)
    fsync_dir(Path(link).parent)
