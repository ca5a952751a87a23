"""Two records must never share a checkpoint on disk: deleting one would delete the other.

Records share an entry when their paths are equal, when one lies inside the other (a file inside
another step's DeepSpeed tag directory, a directory holding another step's file), or when that is
true once symlinks are followed (a step's ``0000002.pt`` linking to ``0000001.pt``).

- :func:`check_new_path`: at the call, a path that shares an entry with another live record is
  refused (:class:`~bestckpt.errors.UnsafePathError`, naming both steps and the fix);
- :func:`kept_owner` (with :func:`symlinked`): at deletion, the kept record that still refers to an
  entry retention dropped (states written before this check, or edited by hand): the entry is then
  left on disk.

Paths are the records' paths relative to the checkpoint directory, with ``/`` separators.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bestckpt.errors import UnsafePathError
from bestckpt.tracking.layout import real_relpath

__all__ = ["overlap", "check_new_path", "symlinked", "kept_owner"]


def _norm(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


def overlap(path: str, other: str) -> str | None:
    """How ``path`` shares an entry with ``other``: ``"is"``, ``"lies inside"``, ``"contains"``, or None."""
    a, b = _norm(path).rstrip("/"), _norm(other).rstrip("/")
    if a == b:
        return "is"
    if a.startswith(b + "/"):
        return "lies inside"
    if b.startswith(a + "/"):
        return "contains"
    return None


def _index_overlap(path: str, paths: Mapping[str, int], step: int, is_dir: bool) -> tuple[str, str] | None:
    """``(how, other)`` for a path of ``paths`` (another step's) sharing an entry with ``path``: a few
    dictionary look-ups, plus one scan of ``paths`` when ``path`` is a directory (only those contain)."""
    path = _norm(path).rstrip("/")
    if paths.get(path, step) != step:
        return "is", path
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if paths.get(parent, step) != step:
            return "lies inside", parent
    if is_dir:
        prefix = path + "/"
        inner = next((p for p, s in paths.items() if _norm(p).startswith(prefix) and s != step), None)
        if inner is not None:
            return "contains", inner
    return None


def check_new_path(root: Path, paths: Mapping[str, int], step: int, rel: str) -> None:
    """Refuse ``rel`` as step ``step``'s checkpoint if it shares an entry with another live record;
    ``paths`` maps the live records' paths to their steps (``TrackerState.live_paths``)."""
    if not paths or (len(paths) == 1 and step in paths.values()):
        return
    real = real_relpath(root, rel)
    is_dir = os.path.isdir(Path(root) / rel)
    for candidate in dict.fromkeys((rel, real)):
        found = _index_overlap(candidate, paths, step, is_dir)
        if found is None:
            continue
        how, other = found
        via = "" if candidate == rel else f" (a symlink to {candidate!r})"
        raise UnsafePathError(
            f"checkpoint path {rel!r} of step {step}{via} {how} {other!r}, the checkpoint of step {paths[other]}: "
            "deleting one would delete the other. Save each step under its own name, e.g. {step:07d}.pt "
            "(never one file overwritten at every save)"
        )


def symlinked(root: Path, paths: Mapping[str, int]) -> dict[str, str]:
    """``{path: where it leads}`` for the live records whose entry is a symlink (one directory scan for
    top-level entries, an ``lstat`` for nested ones): the only records whose real path differs from
    their path, since registered paths have their parent directories resolved."""
    try:
        top = {e.name for e in os.scandir(root) if e.is_symlink()}
    except OSError:
        top = set()
    out = {}
    for path in paths:
        if (path in top) if "/" not in _norm(path) else os.path.islink(Path(root) / path):
            out[path] = real_relpath(root, path)
    return out


def kept_owner(root: Path, rel: str, paths: Mapping[str, int], links: Mapping[str, str]) -> tuple[int, str, str] | None:
    """``(step, path, how)`` of a live record (``paths``: path -> step) whose entry is, contains or lies
    inside the entry ``rel``, directly or through symlinks (``links``: :func:`symlinked` of ``paths``);
    None when deleting ``rel`` cannot touch any live record's checkpoint."""
    mine = tuple(dict.fromkeys((rel, real_relpath(root, rel))))
    is_dir = os.path.isdir(Path(root) / rel)
    for path in mine:
        found = _index_overlap(path, paths, -1, is_dir)
        if found is not None:
            return paths[found[1]], found[1], found[0]
    for theirs, target in links.items():
        for path in mine:
            how = overlap(path, target)
            if how is not None:
                return paths[theirs], theirs, f"{how} {target!r}, where"
    return None
