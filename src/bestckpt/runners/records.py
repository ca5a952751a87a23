"""Tracker record look-ups shared by the runners (the tracker keeps records by step; paths are relative)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bestckpt.tracking.state import Record
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["record_of", "record_path", "status_of"]


def record_of(tracker: BestCheckpointTracker, step: int) -> Record | None:
    """The tracker's record for ``step`` (state reloaded under the tracker's lock), or None."""
    return next((r for r in tracker.records if r.step == step), None)


def status_of(tracker: BestCheckpointTracker, step: int) -> str | None:
    """``"pending"``, ``"evaluated"``, ... for ``step``; None when the tracker does not know it."""
    rec = record_of(tracker, step)
    return None if rec is None else rec.status


def record_path(tracker: BestCheckpointTracker, rec: Record) -> Path:
    """Absolute path of a record's checkpoint (records store it relative to the checkpoint directory)."""
    return Path(tracker.config.checkpoint_dir) / rec.path
