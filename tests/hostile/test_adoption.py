"""Hostile inputs, class R6: a checkpoint written but never registered.

A process killed between writing ``0000040.pt`` and registering it leaves a complete checkpoint that
the state does not know. The writer's next start adopts such checkpoints as ``pending`` (newest
first, one log line each) when they are newer than every recorded step; older unknown entries,
incomplete ones and symlinks are reported and never touched. Each test asserts that nothing needed
is deleted and that nothing outside the directory changes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hostile_dir import on_disk, snapshot  # noqa: F401

from bestckpt.tracking.layout import COMPLETE_MARKER, STATE_FILE
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.timeout(120)

M = "composite_score"


def adopted_line(name: str) -> str:
    return f"adopted {name}: saved but never registered (the process stopped in between); pending evaluation"


# ---------------------------------------------------------------------------------------------- helpers
def save(ckdir: Path, step: int) -> Path:
    path = ckdir / f"{step:07d}.pt"
    tmp = ckdir / f"tmp-save-{step}"
    tmp.write_bytes(f"step {step}".encode())
    os.replace(tmp, path)
    return path


def save_tag(ckdir: Path, step: int, *, marker: bool, latest: bool) -> Path:
    """A DeepSpeed tag directory; ``marker``: rank 0 wrote the completion marker; ``latest``: the pointer."""
    tag = ckdir / f"{step:07d}.pt"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(f"module {step}".encode())
    if marker:
        (tag / COMPLETE_MARKER).write_text("complete\n")
    if latest:
        (ckdir / "latest").write_text(tag.name)
    return tag


def tracker(ckdir: Path, **kw) -> BestCheckpointTracker:
    kw.setdefault("save_top_k", 1)
    kw.setdefault("keep_every_n_steps", None)
    return BestCheckpointTracker(ckdir, metric_name=M, **kw)


def demo_run_until_killed(ckdir: Path) -> None:
    """Steps 10..30 registered (20 scored), then 40 written and the process killed before registering it."""
    t = tracker(ckdir)
    for step in (10, 20, 30):
        save(ckdir, step)
        t.checkpoint_saved(step, None, evaluate=step == 20)
    t.update_checkpoint(20, None, None, {M: 0.5})
    save(ckdir, 40)  # ... SIGKILL here: never registered


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------------------------------------- tests
def test_killed_between_write_and_register_is_adopted_then_evaluated_and_ranked(world: Path, caplog):
    demo_run_until_killed(world)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000040.pt") in messages(caplog)
    rec = {r.step: r for r in t.records}[40]
    assert rec.status == "pending" and rec.info.get("adopted") is True and not rec.pruned
    assert t.pending_steps() == [40]
    assert on_disk(world) == {20, 30, 40} or on_disk(world) == {20, 40}
    assert 40 in on_disk(world) and 20 in on_disk(world)
    save(world, 50)
    t.checkpoint_saved(50, None, evaluate=False)
    assert 40 in on_disk(world)  # pending: protected until scored
    assert t.update_checkpoint(40, None, None, {M: 0.9}) is True  # scored and ranked: the new best
    assert t.best.step == 40 and os.readlink(world / "best.pt") == "0000040.pt"
    assert on_disk(world) == {40, 50}


def test_several_unregistered_checkpoints_are_adopted_newest_first(world: Path, caplog):
    demo_run_until_killed(world)
    save(world, 50)  # a second one (an async checkpointer ahead of the registration)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    lines = [m for m in messages(caplog) if m.startswith("adopted ")]
    assert lines == [adopted_line("0000050.pt"), adopted_line("0000040.pt")]
    assert t.pending_steps() == [40, 50]
    latest = [d.step for d in t.plan() if "latest" in d.reasons]
    assert latest == [50]  # the newest adopted one is the resume point
    assert {40, 50} <= on_disk(world)


def test_unknown_older_entry_is_not_adopted_and_never_deleted(world: Path, caplog):
    demo_run_until_killed(world)
    save(world, 15)  # unknown, and older than recorded steps: not ours to judge
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000015.pt") not in messages(caplog)
    assert any("not in the state and will not be touched" in m and "0000015.pt" in m for m in messages(caplog))
    assert 15 not in {r.step for r in t.records}
    for step in (50, 60, 70):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
    t.prune()
    assert 15 in on_disk(world) and (world / "0000015.pt").read_bytes() == b"step 15"


def test_incomplete_deepspeed_tag_is_not_adopted_until_it_is_complete(world: Path, caplog):
    t = tracker(world)
    for step in (10, 20):
        save_tag(world, step, marker=True, latest=True)
        t.checkpoint_saved(step, None, evaluate=False)
    save_tag(world, 30, marker=False, latest=False)  # killed mid-save: no marker, `latest` still says 20
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000030.pt") not in messages(caplog)
    assert 30 not in {r.step for r in t.records}
    assert (world / "0000030.pt" / "mp_rank_00_model_states.pt").read_bytes() == b"module 30"
    assert {20, 30} <= on_disk(world)
    (world / "0000030.pt" / COMPLETE_MARKER).write_text("complete\n")  # the save did finish after all
    caplog.clear()
    t = tracker(world)
    assert adopted_line("0000030.pt") in messages(caplog)
    assert t.pending_steps() == [30]


def test_a_runner_resuming_pending_steps_evaluates_the_adopted_checkpoint(world: Path):
    from bestckpt.runners.sidecar import SidecarWatcher

    demo_run_until_killed(world)
    t = tracker(world)
    scored = []

    def evaluate_and_record(tracker_, step, path, epoch):
        assert Path(path).read_bytes() == f"step {step}".encode()
        scored.append(step)
        tracker_.update_checkpoint(step, epoch, str(path), {M: 0.8})

    evaluator = SimpleNamespace(protocol=SimpleNamespace(hash="p" * 64), evaluate_and_record=evaluate_and_record)
    watcher = SidecarWatcher(t, evaluator, adopt_after=None)
    assert watcher.run_once() == 1 and scored == [40]
    assert t.best.step == 40 and t.pending_steps() == []
    assert {40} <= on_disk(world)


def test_a_reader_does_not_adopt_or_write(world: Path):
    demo_run_until_killed(world)
    before = snapshot(world)
    reader = BestCheckpointTracker(world, metric_name=M, is_writer=False)
    assert 40 not in {r.step for r in reader.records}
    assert snapshot(world) == before


def test_unregistered_newer_symlink_is_not_adopted_and_its_target_untouched(world: Path, caplog):
    demo_run_until_killed(world)
    os.unlink(world / "0000040.pt")
    target = world.parent / "outside" / "precious.pt"
    os.symlink(target, world / "0000040.pt")
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000040.pt") not in messages(caplog)
    assert 40 not in {r.step for r in t.records}
    for step in (50, 60):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
    assert os.path.islink(world / "0000040.pt") and target.read_bytes() == b"not yours"


def test_first_checkpoint_never_registered_is_adopted(world: Path, caplog):
    """The tracker started (state written, no records), then the run died before registering step 10."""
    tracker(world)
    assert (world / STATE_FILE).exists()
    save(world, 10)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000010.pt") in messages(caplog)
    assert t.pending_steps() == [10] and 10 in on_disk(world)


def test_unregistered_save_of_a_restarted_run_below_the_old_steps_is_kept(world: Path, caplog):
    """After a restart from 0 in a directory holding 2000, an unregistered 0000040.pt is older than a
    recorded step: not adopted (the decision is the user's), reported, and never deleted."""
    t = tracker(world)
    save(world, 2000)
    t.update_checkpoint(2000, None, None, {M: 0.9})
    t = tracker(world)
    for step in (10, 20, 30):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
    save(world, 40)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    assert adopted_line("0000040.pt") not in messages(caplog)
    assert any("will not be touched" in m and "0000040.pt" in m for m in messages(caplog))
    save(world, 50)
    t.checkpoint_saved(50, None, evaluate=False)
    assert {40, 50, 2000} <= on_disk(world)
