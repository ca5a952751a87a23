"""A checkpoint directory beside files it must never touch, for the hostile-input tests."""
from __future__ import annotations

import os
from pathlib import Path


def on_disk(ckdir: Path) -> set[int]:
    return {int(n[:-3]) for n in os.listdir(ckdir) if n.endswith(".pt") and n[:-3].isdigit()}


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``root``: size, mtime, and the bytes of regular files."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, data)
    return out


def snapshot_outside(root: Path, ckdir: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """:func:`snapshot` of ``root`` without the checkpoint directory ``ckdir`` and what it holds."""
    name = ckdir.name
    return {k: v for k, v in snapshot(root).items() if k != name and not k.startswith(name + os.sep)}
