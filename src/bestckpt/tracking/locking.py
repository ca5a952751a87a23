"""The cross-process lock of a checkpoint directory (``best_checkpoints.json.lock``).

``filelock`` (flock-based): the kernel releases it when the holder dies, even by SIGKILL, so a
crashed trainer never wedges the directory.
"""
from __future__ import annotations

from pathlib import Path

import filelock

from bestckpt.errors import StateLockTimeout
from bestckpt.tracking.layout import LOCK_FILE

__all__ = ["lock", "StateLockTimeout"]


def lock(directory: Path, timeout: float = 600.0) -> filelock.BaseFileLock:
    """The cross-process lock of a checkpoint directory (reentrant within one lock object)."""
    return filelock.FileLock(str(Path(directory) / LOCK_FILE), timeout=timeout)
