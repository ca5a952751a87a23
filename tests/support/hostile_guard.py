"""A checkpoint directory under attack, and the checks every hostile-input test ends with.

:class:`Guard` makes ``<tmp>/ck`` (the checkpoint directory) next to ``<tmp>/sibling``, a directory
holding files whose names and contents look like ours; :meth:`Guard.check` asserts the three promises:
nothing outside the checkpoint directory changed, the best and the newest checkpoints are still on
disk (and the best is what ``best.pt`` resolves to, also for a fresh reader), and the state reloads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["Guard", "save", "snapshot", "edit_state", "clear_message"]

#: what the fix hint of a refused path says
PATH_HINT = "{step:07d}.pt"


def save(ckdir: Path, step: int, *, tag: bool = False, name: str | None = None, data: bytes | None = None) -> Path:
    """Write step ``step``'s checkpoint (a file, or a DeepSpeed-like tag directory) under ``name``."""
    path = Path(ckdir) / (name or f"{step:07d}.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    if tag:
        path.mkdir()
        (path / "mp_rank_00_model_states.pt").write_bytes(data or b"model of step %d" % step)
    else:
        path.write_bytes(data or b"weights of step %d" % step)
    return path


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: file bytes, symlink targets, directories (nothing followed)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", full.read_bytes(), full.stat().st_mtime_ns)
    return out


def edit_state(ckdir: Path, change) -> None:
    """Hand-edit ``best_checkpoints.json``: ``change(records_by_step)`` mutates the JSON records."""
    state = Path(ckdir) / "best_checkpoints.json"
    data = json.loads(state.read_text())
    change({r["step"]: r for r in data["checkpoints"]})
    state.write_text(json.dumps(data))


def clear_message(exc: BaseException, *needles: str) -> None:
    """The message names every needle (the value received, the fix)."""
    msg = str(exc)
    missing = [n for n in needles if n not in msg]
    assert not missing, f"message {msg!r} does not name {missing}"


class Guard:
    """``tmp/ck`` to attack, ``tmp/sibling`` that must never change."""

    def __init__(self, tmp_path: Path) -> None:
        self.ckdir = tmp_path / "ck"
        self.ckdir.mkdir()
        self.sibling = tmp_path / "sibling"
        self.sibling.mkdir()
        (self.sibling / "precious.pt").write_bytes(b"precious")
        (self.sibling / "best_checkpoints.json").write_text('{"not": "ours"}')
        (self.sibling / "0000001.pt").mkdir()
        (self.sibling / "0000001.pt" / "mp_rank_00_model_states.pt").write_bytes(b"precious tag")
        (self.sibling / "best.pt").symlink_to("precious.pt")
        self._before = snapshot(self.sibling)

    def tracker(self, **kwargs: Any) -> BestCheckpointTracker:
        kwargs.setdefault("keep_every_n_steps", None)
        return BestCheckpointTracker(self.ckdir, **kwargs)

    def save(self, step: int, **kwargs: Any) -> Path:
        return save(self.ckdir, step, **kwargs)

    def check(self, tracker: BestCheckpointTracker, *, best: int | None, keep: tuple[int, ...] = ()) -> None:
        """Sibling untouched; ``best`` is best, on disk, behind ``best.pt``; every step of ``keep``
        (the newest, at least) is live and on disk; a fresh reader agrees."""
        assert snapshot(self.sibling) == self._before, "something outside the checkpoint directory changed"
        recs = {r.step: r for r in tracker.records}
        for step in (best, *keep):
            if step is None:
                continue
            rec = recs.get(step)
            assert rec is not None and not rec.pruned, f"step {step} lost its record: {rec}"
            assert os.path.lexists(self.ckdir / rec.path), f"step {step}'s {rec.path} was deleted"
        link = self.ckdir / "best.pt"
        if best is None:
            return
        assert tracker.best is not None and tracker.best.step == best, (tracker.best, best)
        assert link.exists(), "best.pt does not resolve"
        assert os.path.realpath(link) == os.path.realpath(self.ckdir / recs[best].path)
        reader = BestCheckpointTracker(self.ckdir, is_writer=False, metric_name=tracker.metric_name,
                                       higher_is_better=tracker.higher_is_better, save_top_k=tracker.save_top_k)
        assert reader.best is not None and reader.best.step == best
