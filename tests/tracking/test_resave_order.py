"""A checkpoint saved again by a run that stopped before registering it is ordered at the next start.

Found by the crash soak under load: a restarted run rewrote an older live step and was killed before
registering it; the next run registered a newer save; a late evaluation of the rewritten step then gave
it the next ``seq`` (the file had changed, so it counted as a new save *now*), which demoted the newest
save, the resume point, out of keep-latest, and retention deleted it. The re-save happened before that
start, so the start puts it in the save order (``saveorder.order_resaves``). No timing: the crash is a
write without the registration, and the late evaluation a call made after the newer registration.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bestckpt.tracking.tracker import BestCheckpointTracker

SETTINGS = dict(save_top_k=1, keep_latest=1, keep_every_n_steps=None)


def _write(ck: Path, step: int, kind: str, payload: bytes) -> str:
    """Commit step ``step``'s checkpoint as a file, or as a tag directory (rewritten in place when it exists)."""
    name = f"{step:07d}.pt"
    if kind == "dir":
        (ck / name).mkdir(exist_ok=True)
        tmp = ck / name / ".model.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, ck / name / "model.pt")
        os.utime(ck / name / "model.pt", ns=(10**18 + len(payload), 10**18 + len(payload)))  # distinct, never equal
    else:
        tmp = ck / f".{name}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, ck / name)
        os.utime(ck / name, ns=(10**18 + len(payload), 10**18 + len(payload)))
    return name


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_late_score_of_a_resave_never_deletes_the_newest_save(tmp_path: Path, kind: str) -> None:
    ck = tmp_path / "ck"
    tracker = BestCheckpointTracker(ck, **SETTINGS)
    for step, score in [(70, 0.95), (100, 0.1)]:  # 70 the best, 100 the latest
        tracker.checkpoint_saved(step, ck / _write(ck, step, kind, b"a" * step))
        tracker.update_checkpoint(step, 0, None, {"composite_score": score})
    del tracker
    _write(ck, 70, kind, b"b" * 71)  # a run resumed from 60 saves 70 again; killed before registering it
    tracker = BestCheckpointTracker(ck, **SETTINGS)  # the next run
    tracker.checkpoint_saved(110, ck / _write(ck, 110, kind, b"c" * 110), evaluate=False)  # the newest save
    tracker.update_checkpoint(70, 0, None, {"composite_score": 0.4})  # a late evaluation of the re-saved 70
    live = {r.step: r.seq for r in tracker.records if not r.pruned}
    assert (ck / "0000110.pt").exists(), f"the newest save (the resume point) was deleted; live seqs {live}"
    assert live[110] > live[70]  # 70 was saved before 110, whenever its score came
    assert not (ck / "0000100.pt").exists()  # ... and after 100: keep-latest (1) keeps 110 alone


def test_a_resave_is_still_a_new_save_without_a_start_in_between(tmp_path: Path) -> None:
    """The same process rewrote 70 without registering it: the next call about it is all the tracker
    sees, and 70 takes the next seq then (as before)."""
    ck = tmp_path / "ck"
    tracker = BestCheckpointTracker(ck, **SETTINGS)
    for step, score in [(70, 0.95), (100, 0.1)]:
        tracker.checkpoint_saved(step, ck / _write(ck, step, "file", b"a" * step))
        tracker.update_checkpoint(step, 0, None, {"composite_score": score})
    _write(ck, 70, "file", b"b" * 71)
    tracker.update_checkpoint(70, 0, None, {"composite_score": 0.96})
    live = {r.step: r.seq for r in tracker.records if not r.pruned}
    assert set(live) == {70} and live[70] > 2
