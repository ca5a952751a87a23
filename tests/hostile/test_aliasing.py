"""R2, path aliasing and our own files: a path another live step owns, lies inside, or that is one of
bestckpt's own files is refused at the call; deletion never removes an entry a kept record refers to."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hostile_guard import PATH_HINT, Guard, clear_message, edit_state

from bestckpt.errors import UnsafePathError

pytestmark = pytest.mark.timeout(60)

S = "composite_score"


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    return Guard(tmp_path)


def test_two_steps_passing_the_same_last_pt(guard: Guard) -> None:
    """A loop that overwrites ``last.pt`` and passes it at every step."""
    t = guard.tracker(save_top_k=1)
    last = guard.save(100, name="last.pt")
    t.update_checkpoint(100, 0, last, {S: 0.9})
    last.write_bytes(b"weights of step 200")
    with pytest.raises(UnsafePathError) as ei:
        t.update_checkpoint(200, 0, last, {S: 0.1})
    clear_message(ei.value, "last.pt", "100", "200", PATH_HINT)
    assert [r.step for r in t.records] == [100]
    guard.save(300)
    t.update_checkpoint(300, 0, None, {S: 0.2})
    assert last.exists()
    guard.check(t, best=100, keep=(300,))


def test_checkpoint_saved_under_another_steps_name(guard: Guard) -> None:
    t = guard.tracker(save_top_k=1)
    first = guard.save(1)
    t.update_checkpoint(1, 0, first, {S: 0.9})
    with pytest.raises(UnsafePathError) as ei:
        t.checkpoint_saved(2, first, evaluate=False)
    clear_message(ei.value, "0000001.pt", "step 1", "step 2", PATH_HINT)
    guard.save(3)
    t.checkpoint_saved(3, None, evaluate=False)
    guard.check(t, best=1, keep=(3,))


def test_record_failure_naming_another_steps_checkpoint(guard: Guard) -> None:
    t = guard.tracker(save_top_k=1)
    first = guard.save(1)
    t.update_checkpoint(1, 0, first, {S: 0.9})
    with pytest.raises(UnsafePathError) as ei:
        t.record_failure(2, "CUDA out of memory", checkpoint_path=first)
    clear_message(ei.value, "0000001.pt", "step 1", "step 2", PATH_HINT)
    assert {r.step: r.status for r in t.records} == {1: "evaluated"}
    guard.check(t, best=1)


def test_path_inside_another_steps_deepspeed_tag(guard: Guard) -> None:
    t = guard.tracker(save_top_k=1)
    tag = guard.save(1, tag=True)
    t.update_checkpoint(1, 0, tag, {S: 0.9})
    inner = tag / "mp_rank_00_model_states.pt"
    with pytest.raises(UnsafePathError) as ei:
        t.update_checkpoint(2, 0, inner, {S: 0.1})
    clear_message(ei.value, "0000001.pt/mp_rank_00_model_states.pt", "inside", "step 1", PATH_HINT)
    guard.save(3)
    t.update_checkpoint(3, 0, None, {S: 0.2})
    assert inner.read_bytes() == b"model of step 1"
    guard.check(t, best=1, keep=(3,))


def test_path_through_a_symlinked_alias_of_another_steps_tag(guard: Guard) -> None:
    """``alias -> 0000001.pt``: ``alias/mp_rank_00_model_states.pt`` is inside step 1's tag."""
    t = guard.tracker(save_top_k=1)
    tag = guard.save(1, tag=True)
    t.update_checkpoint(1, 0, tag, {S: 0.9})
    (guard.ckdir / "alias").symlink_to("0000001.pt", target_is_directory=True)
    with pytest.raises(UnsafePathError) as ei:
        t.checkpoint_saved(2, guard.ckdir / "alias" / "mp_rank_00_model_states.pt")
    clear_message(ei.value, "mp_rank_00_model_states.pt", "step 1", PATH_HINT)
    guard.save(3)
    t.update_checkpoint(3, 0, None, {S: 0.2})
    assert (tag / "mp_rank_00_model_states.pt").exists()
    guard.check(t, best=1, keep=(3,))


def test_step_directory_containing_an_earlier_steps_checkpoint(guard: Guard) -> None:
    t = guard.tracker(save_top_k=1)
    early = guard.save(1, name="run/0000001.pt")
    t.update_checkpoint(1, 0, early, {S: 0.9})
    with pytest.raises(UnsafePathError) as ei:
        t.update_checkpoint(2, 0, guard.ckdir / "run", {S: 0.1})
    clear_message(ei.value, "'run'", "contains", "run/0000001.pt", "step 1", PATH_HINT)
    guard.save(3)
    t.update_checkpoint(3, 0, None, {S: 0.2})
    guard.check(t, best=1, keep=(3,))


def test_symlink_alias_of_another_steps_file(guard: Guard) -> None:
    """Step 2's ``0000002.pt`` is a symlink to step 1's file: pruning step 1 would break step 2."""
    t = guard.tracker(save_top_k=1)
    first = guard.save(1)
    t.update_checkpoint(1, 0, first, {S: 0.1})
    (guard.ckdir / "0000002.pt").symlink_to("0000001.pt")
    with pytest.raises(UnsafePathError) as ei:
        t.update_checkpoint(2, 0, None, {S: 0.9})
    clear_message(ei.value, "0000002.pt", "0000001.pt", "step 1", PATH_HINT)
    assert first.read_bytes() == b"weights of step 1"
    guard.check(t, best=1)


OWN_FILES = ["best_checkpoints.json", "best_checkpoints.json.lock", "best_checkpoints.journal",
             "best_checkpoint_results.json", "best.pt", "best.pt.txt", ".bestckpt-tmp.x", "latest",
             "best_checkpoints.json.corrupt-20240101T000000-99"]


@pytest.mark.parametrize("name", OWN_FILES)
def test_path_naming_one_of_our_own_files(guard: Guard, name: str) -> None:
    """Accepted, it would become best (best.pt -> the state) and be deleted by retention."""
    t = guard.tracker(save_top_k=1, state_compact_bytes=1)  # tiny: every call journals
    for step, score in [(1, 0.5), (2, 0.4)]:
        t.update_checkpoint(step, 0, guard.save(step), {S: score})
    target = guard.ckdir / name
    if not os.path.lexists(target):
        target.write_text("0000001.pt\n" if name.endswith((".txt", "latest")) else "someone's bytes")
    before = os.readlink(target) if target.is_symlink() else target.read_bytes()
    with pytest.raises(UnsafePathError) as ei:
        t.update_checkpoint(3, 0, target, {S: 0.99})
    clear_message(ei.value, name, "bestckpt", PATH_HINT)
    for step in (4, 5):
        t.update_checkpoint(step, 0, guard.save(step), {S: 0.1})
    if name != "best_checkpoints.journal":  # the journal may be compacted away, legitimately
        assert os.path.lexists(target)
    if name not in ("best_checkpoints.json", "best_checkpoints.json.lock", "best_checkpoints.journal", "best.pt",
                    "best_checkpoint_results.json"):  # ours: rewritten by every call
        assert (os.readlink(target) if target.is_symlink() else target.read_bytes()) == before
    guard.check(t, best=1, keep=(5,))


def test_the_held_lock_is_never_registered_nor_deleted(guard: Guard) -> None:
    """Deleting the lock file while holding it let a second process in."""
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(1, 0, guard.save(1), {S: 0.9})
    lock = guard.ckdir / "best_checkpoints.json.lock"
    ino = lock.stat().st_ino
    with pytest.raises(UnsafePathError) as ei:
        t.checkpoint_saved(2, lock, evaluate=False)
    clear_message(ei.value, "best_checkpoints.json.lock", PATH_HINT)
    for step in (3, 4):
        t.checkpoint_saved(step, guard.save(step), evaluate=False)
    assert lock.stat().st_ino == ino
    guard.check(t, best=1, keep=(4,))


def test_resaving_a_step_and_reusing_a_deleted_steps_name_are_allowed(guard: Guard) -> None:
    """Controls: the same step under its own path again, and a name whose checkpoint retention deleted."""
    t = guard.tracker(save_top_k=1)
    last = guard.save(1, name="last.pt")
    t.checkpoint_saved(1, last)
    t.update_checkpoint(1, 0, last, {S: 0.1})  # same step, same path: fine
    t.update_checkpoint(2, 0, guard.save(2), {S: 0.9})
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.2})
    assert not last.exists()  # step 1 pruned: its name is free again
    t.update_checkpoint(4, 0, guard.save(4, name="last.pt"), {S: 0.3})
    guard.check(t, best=2, keep=(4,))


# ------------------------------------------------------------------ defence at deletion (legacy states)
def _legacy(guard: Guard, change) -> None:
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(1, 0, guard.save(1, tag=True), {S: 0.9})
    t.update_checkpoint(2, 0, guard.save(2), {S: 0.1})
    edit_state(guard.ckdir, change)


def test_legacy_state_with_two_steps_sharing_the_bests_path(guard: Guard, caplog) -> None:
    def change(recs):
        recs[2]["checkpoint_path"] = "0000001.pt"

    _legacy(guard, change)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.05})  # step 2 is now neither top-1 nor latest
    assert any("0000001.pt" in m and "step 1" in m for m in caplog.messages), caplog.messages
    guard.check(t, best=1, keep=(3,))


def test_legacy_state_with_a_record_inside_the_bests_tag(guard: Guard, caplog) -> None:
    def change(recs):
        recs[2]["checkpoint_path"] = "0000001.pt/mp_rank_00_model_states.pt"

    _legacy(guard, change)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.05})
    assert (guard.ckdir / "0000001.pt" / "mp_rank_00_model_states.pt").exists()
    assert any("mp_rank_00_model_states.pt" in m and "step 1" in m for m in caplog.messages), caplog.messages
    guard.check(t, best=1, keep=(3,))


def test_legacy_state_with_a_record_naming_our_lock(guard: Guard, caplog) -> None:
    def change(recs):
        recs[2]["checkpoint_path"] = "best_checkpoints.json.lock"

    _legacy(guard, change)
    caplog.set_level(logging.ERROR, logger="bestckpt")
    t = guard.tracker(save_top_k=1)
    lock = guard.ckdir / "best_checkpoints.json.lock"
    ino = lock.stat().st_ino
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.05})
    t.prune()
    assert lock.exists() and lock.stat().st_ino == ino
    assert any("step 2" in m and "best_checkpoints.json.lock" in m for m in caplog.messages), caplog.messages
    guard.check(t, best=1, keep=(3,))


def test_legacy_state_where_the_best_is_a_symlink_to_a_pruned_steps_file(guard: Guard, caplog) -> None:
    """Step 2 (best) is a symlink to step 1's tag; step 1 falls out of the top-1."""
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(1, 0, guard.save(1, tag=True), {S: 0.9})
    t.update_checkpoint(2, 0, guard.save(2), {S: 0.2})
    os.unlink(guard.ckdir / "0000002.pt")
    (guard.ckdir / "0000002.pt").symlink_to("0000001.pt", target_is_directory=True)

    def change(recs):
        recs[1]["metrics"][S], recs[2]["metrics"][S] = 0.1, 0.9

    edit_state(guard.ckdir, change)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = guard.tracker(save_top_k=1)
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.05})
    assert (guard.ckdir / "0000001.pt" / "mp_rank_00_model_states.pt").exists()
    assert any("0000001.pt" in m and "step 2" in m for m in caplog.messages), caplog.messages
    guard.check(t, best=2, keep=(3,))


def test_file_inside_the_target_of_another_steps_symlinked_tag(guard: Guard, caplog) -> None:
    """Step 1 is a symlink to ``store/tag1``; step 2 is a file inside that target: dropping step 2 must
    not delete a file of step 1 (the aliasing is only visible once symlinks are followed)."""
    t = guard.tracker(save_top_k=1)
    (guard.ckdir / "store" / "tag1").mkdir(parents=True)
    (guard.ckdir / "store" / "tag1" / "model.pt").write_bytes(b"model of step 1")
    (guard.ckdir / "0000001.pt").symlink_to("store/tag1", target_is_directory=True)
    t.update_checkpoint(1, 0, None, {S: 0.9})
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t.update_checkpoint(2, 0, guard.ckdir / "store" / "tag1" / "model.pt", {S: 0.1})
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.2})  # step 2 drops out
    assert (guard.ckdir / "store" / "tag1" / "model.pt").read_bytes() == b"model of step 1"
    assert any("store/tag1/model.pt" in m and "step 1" in m for m in caplog.messages), caplog.messages
    guard.check(t, best=1, keep=(3,))
