"""Hostile inputs, class R1: restarts, resumes from older checkpoints, bogus steps.

"Latest" means the most recently saved checkpoint (a per-directory save counter), not the highest
step: a run restarted from step 0 in a directory that holds later steps, a framework resuming from
``checkpoint-N`` below the highest step, one bogus huge step, must never cost the resume point.
Each test asserts that nothing needed is deleted and that nothing outside the directory changes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hostile_dir import on_disk, snapshot  # noqa: F401

from bestckpt.tracking.layout import STATE_FILE
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.timeout(120)

M = "composite_score"


# ---------------------------------------------------------------------------------------------- helpers
def save(ckdir: Path, step: int, gen: int = 1) -> Path:
    """Write step ``step``'s checkpoint as a trainer does (temp name + rename); ``gen`` tells runs apart
    (a later run's file for the same step has other bytes, and another size)."""
    path = ckdir / f"{step:07d}.pt"
    tmp = ckdir / f"tmp-save-{step}"
    tmp.write_bytes(f"run {gen} step {step} ".encode() + b"w" * gen)
    os.replace(tmp, path)
    return path


def tracker(ckdir: Path, **kw) -> BestCheckpointTracker:
    kw.setdefault("save_top_k", 1)
    kw.setdefault("keep_every_n_steps", None)
    return BestCheckpointTracker(ckdir, metric_name=M, **kw)


def first_run(ckdir: Path, scores: dict[int, float], **kw) -> None:
    """An earlier run that saved and scored ``scores`` (then stopped)."""
    t = tracker(ckdir, **kw)
    for step, score in scores.items():
        save(ckdir, step, gen=1)
        t.checkpoint_saved(step, None)
        t.update_checkpoint(step, None, None, {M: score})


def went_back(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "step went back" in r.getMessage()]


# ---------------------------------------------------------------------------------------------- tests
def test_restart_from_zero_keeps_the_new_runs_newest_after_every_save(world: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    first_run(world, {1000: 0.5, 2000: 0.9})
    t = tracker(world)
    for i, step in enumerate(range(0, 600, 100)):
        save(world, step, gen=2)
        t.checkpoint_saved(step, None, evaluate=False)
        assert step in on_disk(world), f"the resume point {step} was deleted right after it was saved"
        assert 2000 in on_disk(world)  # the best
        if i:
            assert step - 100 not in on_disk(world)  # the previous resume point is not needed any more
    assert t.best.step == 2000 and os.readlink(world / "best.pt") == "0002000.pt"
    msgs = went_back(caplog)
    assert msgs == ["step went back from 2000 to 0 (a resumed or restarted run): 0 is now the resume point"]


def test_restart_scored_by_the_guides_loop_keeps_the_newest(world: Path):
    """update_checkpoint only (no checkpoint_saved), as the guide's loop does, scores below the best."""
    first_run(world, {1000: 0.5, 2000: 0.9})
    t = tracker(world)
    for step in (0, 100, 200):
        save(world, step, gen=2)
        t.update_checkpoint(step, None, None, {M: 0.1})
        assert step in on_disk(world) and 2000 in on_disk(world)
    assert on_disk(world) == {2000, 200}


def test_resume_from_an_older_kept_checkpoint(world: Path):
    """A framework resumes from checkpoint 1000 although 2000 exists: each new save is the resume point."""
    first_run(world, {1000: 0.9, 2000: 0.3}, keep_latest=1)
    assert on_disk(world) == {1000, 2000}
    t = tracker(world)
    for step in (1100, 1200, 1300):
        save(world, step, gen=2)
        t.checkpoint_saved(step, None)
        assert step in on_disk(world) and 1000 in on_disk(world)  # resume point, best
        t.update_checkpoint(step, None, None, {M: 0.2})
        assert step in on_disk(world) and 1000 in on_disk(world)
    assert on_disk(world) == {1000, 1300}  # 2000 is neither best nor the resume point any more
    assert t.best.step == 1000


def test_one_bogus_huge_step_protects_only_itself(world: Path):
    t = tracker(world)
    save(world, 10**12)
    t.checkpoint_saved(10**12, None, evaluate=False)  # a step counter gone wrong, once
    for step in (100, 200, 300):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
        assert step in on_disk(world), f"step {step}, the newest save, was deleted"
    assert on_disk(world) == {300}
    reasons = {d.step: d.reasons for d in t.plan()}
    assert reasons[300] == ("latest",)


def test_keep_latest_two_across_a_restart(world: Path):
    first_run(world, {1000: 0.5, 2000: 0.9}, keep_latest=2)
    t = tracker(world, keep_latest=2)
    save(world, 0, gen=2)
    t.checkpoint_saved(0, None, evaluate=False)
    assert on_disk(world) == {0, 2000}  # 2000: best and one of the two newest saves; 1000: neither
    save(world, 100, gen=2)
    t.checkpoint_saved(100, None, evaluate=False)
    assert on_disk(world) == {0, 100, 2000}
    save(world, 200, gen=2)
    t.checkpoint_saved(200, None, evaluate=False)
    assert on_disk(world) == {100, 200, 2000}
    assert [d.step for d in t.plan() if any(r.startswith("latest") for r in d.reasons)] == [100, 200]


def test_restart_that_re_saves_an_existing_step_number(world: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    first_run(world, {1000: 0.5, 2000: 0.9}, save_top_k=2)
    assert on_disk(world) == {1000, 2000}
    t = tracker(world, save_top_k=2)
    for step in (500, 1000):
        save(world, step, gen=2)  # the restarted run writes step 1000 again: a new file
        t.checkpoint_saved(step, None, evaluate=False)
        assert step in on_disk(world) and 2000 in on_disk(world)
    assert on_disk(world) == {1000, 2000}
    assert (world / "0001000.pt").read_bytes().startswith(b"run 2")
    assert t.best.step == 2000
    assert "step went back from 2000 to 500 (a resumed or restarted run): 500 is now the resume point" in went_back(caplog)


def test_re_saved_step_scored_without_checkpoint_saved_becomes_the_resume_point(world: Path):
    """The guide's loop re-saves step 1000 after a restart and only calls update_checkpoint: the file
    changed, so this is a new save (not a re-score of the old one)."""
    first_run(world, {1000: 0.95, 2000: 0.9})
    assert on_disk(world) == {1000, 2000}  # best, latest
    t = tracker(world)
    save(world, 1000, gen=2)
    t.update_checkpoint(1000, None, None, {M: 0.1})
    assert on_disk(world) == {1000, 2000}  # 1000: the resume point; 2000: the best
    assert t.best.step == 2000


def test_restart_after_the_state_was_lost(world: Path):
    first_run(world, {1000: 0.5, 2000: 0.9})
    os.unlink(world / STATE_FILE)
    t = tracker(world)  # rebuilds from disk: the old checkpoints are kept (their scores are lost)
    for step in (0, 100, 200):
        save(world, step, gen=2)
        t.checkpoint_saved(step, None, evaluate=False)
        assert step in on_disk(world) and 2000 in on_disk(world)
    assert on_disk(world) == {2000, 200}


def test_state_from_before_the_save_counter_falls_back_to_step_order(world: Path, caplog):
    """Records without ``seq`` (an older bestckpt) rank by step; the first new save is the newest."""
    caplog.set_level(logging.INFO, logger="bestckpt")
    first_run(world, {1000: 0.9, 2000: 0.3, 3000: 0.2})
    state = json.loads((world / STATE_FILE).read_text())
    state.pop("next_seq", None)
    for rec in state["checkpoints"]:
        rec.pop("seq", None)
    (world / STATE_FILE).write_text(json.dumps(state))
    t = tracker(world)
    assert on_disk(world) == {1000, 3000}  # best + latest by step: nothing needed was lost on upgrade
    save(world, 0, gen=2)
    t.checkpoint_saved(0, None, evaluate=False)
    assert on_disk(world) == {0, 1000}
    assert went_back(caplog) == ["step went back from 3000 to 0 (a resumed or restarted run): 0 is now the resume point"]


def test_registering_an_unchanged_checkpoint_again_is_not_a_new_save(world: Path, caplog):
    """A resumed demo re-registers the pending step 40; a protocol change re-registers scored steps:
    the newest save (50) stays the resume point, and no 'step went back' warning."""
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    for step in (20, 30, 40, 50):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=step in (20, 40))
    t.update_checkpoint(20, None, None, {M: 0.5})
    assert on_disk(world) == {20, 40, 50}
    t2 = tracker(world)  # the re-run
    t2.checkpoint_saved(40, None, evaluate=True)
    t2.checkpoint_saved(20, None, evaluate=True)  # protocol change: score it again
    assert on_disk(world) == {20, 40, 50}
    t2.update_checkpoint(40, None, None, {M: 0.7})
    t2.update_checkpoint(20, None, None, {M: 0.5})
    assert on_disk(world) == {40, 50}
    assert went_back(caplog) == []


def test_late_evaluation_of_an_old_runs_pending_step_keeps_the_new_resume_point(world: Path):
    t = tracker(world)
    for step in (1000, 2000):
        save(world, step)
        t.checkpoint_saved(step, None)
    t.update_checkpoint(1000, None, None, {M: 0.9})
    t = tracker(world)  # restart from 0 while 2000 still waits for its evaluation
    save(world, 0, gen=2)
    t.checkpoint_saved(0, None, evaluate=False)
    t.update_checkpoint(2000, None, None, {M: 0.1})  # an evaluator catching up with the old run
    assert on_disk(world) == {0, 1000}  # 2000 was scored low: neither best nor the resume point


def test_save_order_survives_a_reopen_and_another_tracker_object(world: Path):
    t = tracker(world)
    for step in (300, 100):  # the second save went back
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
    assert on_disk(world) == {100}
    reader = BestCheckpointTracker(world, metric_name=M, is_writer=False)
    assert [d.step for d in reader.plan() if d.keep] == [100]
    t2 = tracker(world)  # a new process
    save(world, 50)
    t2.checkpoint_saved(50, None, evaluate=False)
    assert on_disk(world) == {50}
    seqs = {r["step"]: r["seq"] for r in json.loads((world / STATE_FILE).read_text())["checkpoints"]}
    assert seqs[50] > seqs[100] > seqs[300]


def test_save_order_through_the_journal(world: Path):
    """Large states append to a journal: the save order and counter survive replay by another object."""
    a = tracker(world, state_compact_bytes=0)
    b = tracker(world, state_compact_bytes=0)
    for i, step in enumerate((1000, 2000, 0, 100)):
        save(world, step)
        (a if i % 2 else b).checkpoint_saved(step, None, evaluate=False)
        assert step in on_disk(world)
    assert on_disk(world) == {100}
    save(world, 10)
    a.checkpoint_saved(10, None, evaluate=False)
    assert on_disk(world) == {10}


def test_directory_copied_without_file_times_then_resumed(world: Path, caplog):
    """``cp -r`` gives every file new times. Re-registering and scoring the copied checkpoints is not
    a re-save: the latest save (50) stays the resume point, and no 'step went back' warning."""
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    for step in (20, 30, 40, 50):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=step in (20, 40))
    t.update_checkpoint(20, None, None, {M: 0.5})
    assert on_disk(world) == {20, 40, 50}
    for i, name in enumerate(sorted(os.listdir(world))):  # the copy's times: its own copying order
        os.utime(world / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9), follow_symlinks=False)
    t2 = tracker(world)  # the resumed run, on the copy
    t2.checkpoint_saved(40, None, evaluate=True)  # re-queues its pending step
    t2.update_checkpoint(40, None, None, {M: 0.1})  # ... scored low
    assert on_disk(world) == {20, 50}
    assert went_back(caplog) == []
