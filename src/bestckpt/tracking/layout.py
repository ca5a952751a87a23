"""The checkpoint directory's layout: our file names, step checkpoints, completeness, paths.

- The files bestckpt keeps beside the checkpoints (:data:`STATE_FILE`, :data:`RESULTS_FILE`,
  :data:`LOCK_FILE`, :data:`JOURNAL_FILE`, :data:`BEST_LINK` and its pointer-file fallback).
- Which entries are step checkpoints (:func:`step_entries`, the one scan of the directory, with
  the config's ``step_from_name`` as the one name parser) and whether each is completely written
  (:func:`find_checkpoints`, :func:`is_checkpoint_complete`; DeepSpeed's ``latest`` pointer,
  :func:`read_latest_tag`; the completion marker, :func:`mark_complete`).
- Paths handed to the tracker, expressed relative to the directory (:func:`checkpoint_relpath`,
  :func:`legacy_relpath`, :func:`real_relpath`), never one of our own files (:func:`own_file`).
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

from bestckpt.errors import UnsafePathError
from bestckpt.fsio import TEMP_PREFIX, atomic_write_text
from bestckpt.tracking.entries import confine

__all__ = [
    "STATE_FILE",
    "RESULTS_FILE",
    "LOCK_FILE",
    "JOURNAL_FILE",
    "BEST_LINK",
    "POINTER_SUFFIX",
    "COMPLETE_MARKER",
    "LATEST_FILE",
    "OWN_NAMES",
    "checkpoint_relpath",
    "legacy_relpath",
    "real_relpath",
    "own_file",
    "check_not_own",
    "read_latest_tag",
    "is_checkpoint_complete",
    "step_entries",
    "find_checkpoints",
    "mark_complete",
]

STATE_FILE = "best_checkpoints.json"
RESULTS_FILE = "best_checkpoint_results.json"
LOCK_FILE = STATE_FILE + ".lock"
JOURNAL_FILE = "best_checkpoints.journal"
BEST_LINK = "best.pt"
POINTER_SUFFIX = ".txt"  # best.pt.txt: the fallback where symlinks are impossible
LATEST_FILE = "latest"  # DeepSpeed's pointer to its newest tag
#: top-level names that are never a checkpoint: ours, and DeepSpeed's pointer (``*.corrupt-*`` and
#: names starting with ``.bestckpt-`` are ours too, see :func:`own_file`)
OWN_NAMES = frozenset({STATE_FILE, RESULTS_FILE, LOCK_FILE, JOURNAL_FILE, BEST_LINK, BEST_LINK + POINTER_SUFFIX,
                       LATEST_FILE})


def own_file(relpath: str) -> str | None:
    """The name of bestckpt's own file (or DeepSpeed's ``latest``) that ``relpath`` is or lies in, else None.

    Ours: :data:`OWN_NAMES` and the unreadable states moved aside (``*.corrupt-*``) at the top level,
    and anything named ``.bestckpt-*`` at any depth (temporaries, deletions in progress, completion markers).
    """
    parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    if parts[0] in OWN_NAMES or fnmatch.fnmatchcase(parts[0], "*.corrupt-*"):
        return parts[0]
    return next((p for p in parts if p.startswith(TEMP_PREFIX)), None)


def check_not_own(relpath: str, step: int, *, given: str | None = None) -> None:
    """Raise :class:`UnsafePathError` if ``relpath`` (what the path ``given`` resolves to) is one of our files."""
    name = own_file(relpath)
    if name is None:
        return
    shown = repr(relpath) if given is None or given == relpath else f"{given!r} (resolving to {relpath!r})"
    raise UnsafePathError(
        f"checkpoint path {shown} of step {step} names {name!r}, one of the files bestckpt keeps beside the "
        "checkpoints (state, journal, lock, results, best.pt, temporaries) or DeepSpeed's 'latest': it is never a "
        "checkpoint, never registered nor deleted. Save each step under its own name, e.g. {step:07d}.pt"
    )


def real_relpath(root: Path, relpath: str) -> str:
    """Where the entry ``relpath`` of ``root`` leads once every symlink is followed: a path relative to
    ``root`` when it stays inside, else the absolute real path (which no relative path can equal)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relpath))
    if real == real_root:
        return "."
    if real.startswith(real_root.rstrip(os.sep) + os.sep):
        return os.path.relpath(real, real_root)
    return real


def checkpoint_relpath(root: Path, path: str | Path | None, default: str, step: int, *, must_exist: bool) -> str:
    """``path`` as a path relative to the checkpoint directory ``root`` (``default``, the step's
    file name, when ``path`` is ``None``).

    Absolute paths must lie inside the directory. A relative path is taken relative to the
    current directory when that lands inside the checkpoint directory, else relative to it.
    Our own files (:func:`own_file`), also behind a symlink, raise :class:`UnsafePathError`.
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
    for candidate in dict.fromkeys((rel, real_relpath(root, rel))):
        check_not_own(candidate, step, given=rel)
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


#: a file inside a checkpoint directory that says "this checkpoint is completely written"
COMPLETE_MARKER = ".bestckpt-complete"


def read_latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag named by DeepSpeed's ``checkpoint_dir/latest`` text file, or None.

    None also when the file cannot be read or decoded: a broken pointer must not stop bookkeeping.
    """
    latest = Path(checkpoint_dir) / "latest"
    try:
        text = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
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


def step_entries(checkpoint_dir: str | Path, step_from_name: Callable[[str], int | None]) -> list[tuple[int, str]]:
    """``(step, name)`` of every entry of the directory named like a step checkpoint, sorted by name.

    Every kind of entry counts (symlinks too: the state may track a symlinked checkpoint); callers
    filter. Raises ``OSError`` when the directory cannot be listed.
    """
    found = []
    for name in sorted(os.listdir(checkpoint_dir)):
        step = step_from_name(name)
        if step is not None:
            found.append((step, name))
    return found


def find_checkpoints(checkpoint_dir: str | Path, step_from_name: Callable[[str], int | None]) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every step checkpoint in the directory, ascending by step.

    Symlinks and ``*.tmp`` names are left out (:func:`is_checkpoint_complete` never accepts a
    symlink; ``.tmp`` is a save still in progress).
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = sorted((step, root / name) for step, name in step_entries(root, step_from_name)
                   if not name.endswith(".tmp") and not (root / name).is_symlink())
    latest = read_latest_tag(root)
    return [
        (step, path, is_checkpoint_complete(path, later_exists=i < len(found) - 1, latest_tag=latest))
        for i, (step, path) in enumerate(found)
    ]


def mark_complete(tag_dir: str | Path) -> Path:
    """Write the completion marker into a checkpoint directory (rank 0, after the save returned)."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(tag_dir)!r} does not exist; save the checkpoint first")
    marker = tag_dir / COMPLETE_MARKER
    atomic_write_text(marker, "complete\n")
    return marker
