"""The checkpoint directory's layout: our file names, step checkpoints, completeness, paths.

- The files bestckpt keeps beside the checkpoints (:data:`STATE_FILE`, :data:`RESULTS_FILE`,
  :data:`LOCK_FILE`, :data:`JOURNAL_FILE`, :data:`BEST_LINK` and its pointer-file fallback).
- Which entries are step checkpoints (:func:`step_entries`, the one scan of the directory, with
  the config's ``step_from_name`` as the one name parser, plus directories outside the template
  whose completion marker records their step, :func:`marker_step`) and whether each is completely
  written (:func:`find_checkpoints`, :func:`is_checkpoint_complete`; DeepSpeed's ``latest`` pointer,
  :func:`read_latest_tag`; the completion marker, :func:`mark_complete`). Every other name
  (``latest``, ``latest.pt``, ``final.pt``, ``random_states_*.pkl``, ``last.ckpt``, a user's file)
  is outside the layout: never a checkpoint, never touched (``docs/layouts.md``).
- Paths handed to the tracker, expressed relative to the directory (:func:`checkpoint_relpath`,
  :func:`legacy_relpath`, :func:`real_relpath`), never one of our own files (:func:`own_file`).
- Size bounds of what bestckpt reads there (:data:`STATE_MAX_BYTES`, :data:`POINTER_MAX_BYTES`) and
  the pointer files' reader (:func:`read_pointer_file`): anything else in the directory may have
  been planted, so a FIFO, device, link or binary file where a pointer should be is ignored with a
  warning (:func:`warn_once`), never followed, blocked on or read without bound.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from bestckpt import fsio
from bestckpt.errors import UnsafeFileError, UnsafePathError
from bestckpt.fsio import TEMP_PREFIX
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
    "marker_step",
    "STATE_MAX_BYTES",
    "POINTER_MAX_BYTES",
    "read_pointer_file",
    "warn_once",
]

logger = logging.getLogger(__name__)

STATE_FILE = "best_checkpoints.json"
RESULTS_FILE = "best_checkpoint_results.json"
LOCK_FILE = STATE_FILE + ".lock"
JOURNAL_FILE = "best_checkpoints.journal"
BEST_LINK = "best.pt"
POINTER_SUFFIX = ".txt"  # best.pt.txt: the fallback where symlinks are impossible
STATE_MAX_BYTES = 1 << 30  # the state snapshot and its journal (a million records is ~300 MB)
POINTER_MAX_BYTES = 4096  # DeepSpeed's `latest`, best.pt.txt: one relative path

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it (a planted file is seen
    at every call; one line says it)."""
    if message in _warned:
        return
    if len(_warned) >= 1024:
        _warned.clear()
    _warned.add(message)
    logger.warning("%s", message)


def read_pointer_file(path: Path, what_happens: str) -> str | None:
    """The text of a small pointer file (one relative path), or ``None`` when it is absent, empty
    or unusable: a FIFO, device, directory, symlink, more than :data:`POINTER_MAX_BYTES` bytes, not
    UTF-8 text. Unusable ones are ignored with one warning naming the file and ``what_happens``."""
    try:
        raw = fsio.read_regular(path, POINTER_MAX_BYTES, error=UnsafeFileError)
        text = raw.decode("utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        warn_once(f"ignoring {path}: it is not UTF-8 text (a binary file?); {what_happens}")
        return None
    except OSError as exc:
        warn_once(f"ignoring {path}: {exc}; {what_happens}")
        return None
    if "\x00" in text or "\n" in text:
        warn_once(f"ignoring {path}: it does not hold one path; {what_happens}")
        return None
    return text or None


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
    assert rel is not None  # set above, or refused
    confine(root, rel)
    for candidate in dict.fromkeys((rel, real_relpath(root, rel))):
        check_not_own(candidate, step, given=rel)
    if must_exist:
        try:
            mode = os.lstat(root / rel).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(
                f"checkpoint {root / rel} of step {step} does not exist; call the tracker after the checkpoint "
                "is completely saved (and pass the path it was saved to)"
            ) from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise UnsafeFileError(
                f"checkpoint {root / rel} of step {step} is {fsio.describe_kind(mode)}, not a checkpoint file or "
                "directory (reading it could block); remove it and save the checkpoint under that name"
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

    None also when the file cannot be used (:func:`read_pointer_file`: a warning says why): a broken
    pointer must not stop bookkeeping.
    """
    return read_pointer_file(Path(checkpoint_dir) / "latest",
                             "DeepSpeed's `latest` protects no checkpoint until DeepSpeed rewrites it")


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
    try:
        if stat.S_ISREG(os.lstat(path / COMPLETE_MARKER).st_mode):  # a planted link vouches for nothing
            return True
    except OSError:
        pass
    if latest_tag is not None and latest_tag == path.name:
        return True
    return later_exists


#: HunyuanDiT's epoch tags (``e{epoch:04d}.pt``): named without their step, so a scan that meets one
#: without a step-recording marker says how to register it (once per process)
_EPOCH_TAG = re.compile(r"e[0-9]+\.pt")


def marker_step(tag_dir: str | Path) -> int | None:
    """The step recorded in a checkpoint directory's completion marker, or ``None``: no marker, a marker
    written without a step (older bestckpt, ``mark_complete(tag)``), or one that is not ours (a link,
    more than :data:`POINTER_MAX_BYTES`, not the JSON :func:`mark_complete` writes). Reads one tiny
    file, never the checkpoint."""
    try:
        raw = fsio.read_regular(Path(tag_dir) / COMPLETE_MARKER, POINTER_MAX_BYTES, error=UnsafeFileError)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return None
    step = data.get("step") if isinstance(data, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def _marked_entry(entry: os.DirEntry[str]) -> int | None:
    """The step of a directory outside the template that holds our marker with a step; else ``None``,
    with one warning when the entry is a checkpoint bestckpt cannot place (marked without a step, or
    named like HunyuanDiT's epoch tag)."""
    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
        return None
    step = marker_step(entry.path)
    if step is not None:
        return step
    if os.path.lexists(os.path.join(entry.path, COMPLETE_MARKER)) or _EPOCH_TAG.fullmatch(entry.name):
        warn_once(f"ignoring {entry.path}: its name is outside filename_template and no completion marker records "
                  "its step, so bestckpt neither evaluates nor deletes it. To track it, register it with its training "
                  "step (tracker.checkpoint_saved(step, path) or update_checkpoint) or write "
                  "mark_complete(path, step=STEP) after saving it")
    return None


def step_entries(checkpoint_dir: str | Path, step_from_name: Callable[[str], int | None]) -> list[tuple[int, str]]:
    """``(step, name)`` of every entry of the directory that is a step checkpoint, sorted by name.

    Named by the template (``step_from_name``): files, directories and symlinks count (the state may
    track a symlinked checkpoint); callers filter. A FIFO, socket or device named like a checkpoint is
    left out with a warning: it can never be a checkpoint, and reading it could block.
    Outside the template: a real directory whose completion marker records a step (:func:`mark_complete`
    with ``step``, e.g. HunyuanDiT's epoch tag ``e0003.pt``) is that step's checkpoint, unless a
    template-named entry has the same step (that one wins, logged once). Every other name is left out.
    Raises ``OSError`` when the directory cannot be listed.
    """
    found = []
    marked = []
    with os.scandir(checkpoint_dir) as it:
        for entry in it:
            step = step_from_name(entry.name)
            if step is None:
                if own_file(entry.name) is None and not entry.name.endswith(".tmp"):
                    step = _marked_entry(entry)
                    if step is not None:
                        marked.append((step, entry.name))
                continue
            if not (entry.is_symlink() or entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
                try:
                    kind = fsio.describe_kind(entry.stat(follow_symlinks=False).st_mode)
                except OSError:
                    continue  # vanished
                warn_once(f"ignoring {entry.path}: it is {kind}, not a checkpoint; remove it")
                continue
            found.append((step, entry.name))
    named = {step for step, _ in found}
    for step, name in marked:
        if step in named:
            warn_once(f"ignoring {Path(checkpoint_dir) / name} as the checkpoint of step {step}: an entry named by "
                      "filename_template holds that step")
        else:
            found.append((step, name))
    return sorted(found, key=lambda pair: pair[1])


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


def mark_complete(tag_dir: str | Path, step: int | None = None) -> Path:
    """Write the completion marker into a checkpoint directory (rank 0, after the save returned).

    ``step``: the training step the checkpoint holds, recorded in the marker (a few bytes of JSON,
    written atomically). A directory whose name is outside ``filename_template`` (HunyuanDiT's epoch
    tag ``e0003.pt``) is then that step's checkpoint for every scan (sidecar, restart, reconcile)
    without loading it. Without ``step`` the marker holds ``complete`` as it always did; every
    marker, with a step or not, means complete.
    A tag that is a symlink is refused: the marker would land wherever it points (and a symlinked
    tag is never taken as complete anyway).
    """
    tag_dir = Path(tag_dir)
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise ValueError(f"step must be a non-negative int (the checkpoint's training step), got {step!r}")
    if tag_dir.is_symlink():
        raise UnsafePathError(
            f"checkpoint directory {str(tag_dir)!r} is a symbolic link (to {os.readlink(tag_dir)}); bestckpt writes "
            "its completion marker only into a real directory inside the checkpoint directory. Save the tag "
            "there (move it into the checkpoint directory instead of linking it)"
        )
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(tag_dir)!r} does not exist; save the checkpoint first")
    marker = tag_dir / COMPLETE_MARKER
    # without a step: the marker every version wrote; with one, a tiny JSON document scans can read
    text = "complete\n" if step is None else json.dumps({"bestckpt": "complete", "step": step}) + "\n"
    fsio.atomic_write_text(marker, text)
    return marker
