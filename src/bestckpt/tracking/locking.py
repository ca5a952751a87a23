"""The cross-process lock of a checkpoint directory (``best_checkpoints.json.lock``).

``filelock`` (flock-based): the kernel releases it when the holder dies, even by SIGKILL, so a
crashed trainer never wedges the directory. The lock file must be a regular file (or absent):
before every acquisition it is checked with ``lstat``, so a symlink planted there is never opened
(older ``filelock`` versions open it with ``O_TRUNC``/``O_CREAT``, truncating or creating a file
outside the directory) and a directory or FIFO there gives a clear error instead of a long wait.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import filelock

from bestckpt import fsio
from bestckpt.errors import StateLockTimeout, UnsafeFileError
from bestckpt.tracking.layout import LOCK_FILE

__all__ = ["lock", "DirectoryLock", "StateLockTimeout"]


class DirectoryLock:
    """``filelock.FileLock`` on the directory's lock file, refusing anything but a regular file there
    (:class:`~bestckpt.errors.UnsafeFileError`, naming the file and the fix). Reentrant like it."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path), timeout=timeout)

    @property
    def timeout(self) -> float:
        return self._lock.timeout

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        fsio.check_regular(self.path, error=UnsafeFileError)
        return self._lock.acquire(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> None:
        self._lock.release(*args, **kwargs)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock(directory: Path, timeout: float = 600.0) -> DirectoryLock:
    """The cross-process lock of a checkpoint directory (reentrant within one lock object)."""
    return DirectoryLock(Path(directory) / LOCK_FILE, timeout=timeout)
