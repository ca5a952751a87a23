"""Which checkpoints are on disk and completely written (files, DeepSpeed tag directories).

Used by the sidecar watcher, ``bestckpt evaluate`` and the DeepSpeed integration; reads the
directory only, never the tracker.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["COMPLETE_MARKER", "find_checkpoints", "is_checkpoint_complete", "read_latest_tag"]

#: a file inside a checkpoint directory that says "this checkpoint is completely written"
COMPLETE_MARKER = ".bestckpt-complete"


def read_latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag named by DeepSpeed's ``checkpoint_dir/latest`` text file, or None."""
    latest = Path(checkpoint_dir) / "latest"
    try:
        text = latest.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None
    return text or None


def is_checkpoint_complete(path: str | Path, *, later_exists: bool, latest_tag: str | None = None) -> bool:
    """Whether a checkpoint is completely on disk and safe to evaluate.

    A file is complete once it has its final name (trainers must write to a temporary name and
    rename, as ``torch.save`` + ``os.replace`` does). A directory (DeepSpeed tag) is complete when
    it holds the ``.bestckpt-complete`` marker, when DeepSpeed's ``latest`` names it, or when a
    later tag exists (DeepSpeed saves tags one after another, with a barrier at the end of each).
    ``latest`` alone is weak (DeepSpeed writes it before its final barrier), so trainers that can
    should write the marker on rank 0 after ``save_checkpoint`` returns.
    """
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    if (path / COMPLETE_MARKER).exists():
        return True
    if latest_tag is not None and latest_tag == path.name:
        return True
    return later_exists


def find_checkpoints(checkpoint_dir: str | Path, step_from_name: Callable[[str], int | None]) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every step checkpoint in the directory, ascending by step."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        if entry.is_symlink() or entry.name.endswith(".tmp"):
            continue
        step = step_from_name(entry.name)
        if step is not None:
            found.append((step, entry))
    found.sort()
    latest = read_latest_tag(root)
    return [
        (step, path, is_checkpoint_complete(path, later_exists=i < len(found) - 1, latest_tag=latest))
        for i, (step, path) in enumerate(found)
    ]
