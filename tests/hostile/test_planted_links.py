"""Symlinks planted in the checkpoint directory: at temporary names, at our own files' names, at
checkpoints, pointing outside the directory or at devices.

Nothing bestckpt writes may land outside the directory (every file is published under a unique
temporary name created with ``O_EXCL | O_NOFOLLOW``, then renamed); nothing it reads is read
through a symlink (our state, journal, lock: a clear error naming the file and the fix; pointer
files: ignored with a warning). Tracker calls run in bounded subprocesses (tests/support/hostile_fs.py).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hostile_fs import (
    Outcome,
    Sandbox,
    assert_clear,
    assert_cli_clear,
    json_status,
    make_run,
    pointed,
    run_cli,
    run_tracker,
    tree_digest,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="needs POSIX symlinks")

STATE, JOURNAL, LOCK = "best_checkpoints.json", "best_checkpoints.journal", "best_checkpoints.json.lock"
RESULTS, POINTER, MARKER = "best_checkpoint_results.json", "best.pt.txt", ".bestckpt-complete"
SCORES = {100: 0.1, 200: 0.5, 300: 0.3}  # top-2: 200 (best) and 300 (also the latest); 100 pruned
OPEN = "t = BestCheckpointTracker(D, save_top_k=2, keep_every_n_steps=None)\n"
ADD = OPEN + """
write(400)
t.update_checkpoint(400, None, D / "0000400.pt", {"composite_score": 0.9})
result = t.best.step
"""


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    sandbox = Sandbox(tmp_path)
    make_run(sandbox.run, SCORES, save_top_k=2)
    return sandbox


def _checkpoints(d: Path) -> set[str]:
    return {n for n in os.listdir(d) if n.endswith(".pt") and n != "best.pt"}


def _assert_added(d: Path) -> None:
    assert pointed(d / "best.pt") == "0000400.pt"
    assert _checkpoints(d) == {"0000200.pt", "0000400.pt"}


def _assert_untouched(d: Path) -> None:
    assert _checkpoints(d) == {"0000200.pt", "0000300.pt"}
    assert pointed(d / "best.pt") == "0000200.pt"


def _plant(link: Path, target: Path | str) -> None:
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


# -------------------------------------------------------------------------- the completion marker
def test_links_at_predictable_marker_temp_names_are_never_followed(box: Sandbox):
    tag = box.run / "0000500.pt"
    tag.mkdir()
    victim = box.outside / "victim.txt"
    names = [MARKER + ".tmp", f".{MARKER}.tmp-{{pid}}", f".bestckpt-tmp.{MARKER}", f".bestckpt-tmp.{MARKER}.{{pid}}"]
    box.freeze()
    out = run_tracker(box.run, f"""
from bestckpt.integrations import deepspeed
tag = D / "0000500.pt"
for name in {names!r}:  # planted by the subprocess: the names may hold its pid
    os.symlink({str(victim)!r}, tag / name.format(pid=os.getpid()))
deepspeed.mark_complete(tag)
result = [deepspeed.is_tag_complete(D, "0000500.pt"), sorted(os.listdir(tag))]
""")
    assert out.ok, out
    assert out.result[0] is True
    marker = tag / MARKER
    assert stat.S_ISREG(os.lstat(marker).st_mode) and marker.read_text() == "complete\n"
    box.assert_outside_unchanged()


def test_marker_name_planted_as_a_link_neither_completes_the_tag_nor_is_written_through(box: Sandbox):
    tag = box.run / "0000500.pt"
    tag.mkdir()
    _plant(tag / MARKER, box.outside / "victim.txt")
    box.freeze()
    out = run_tracker(box.run, """
from bestckpt.integrations import deepspeed
before = deepspeed.is_tag_complete(D, "0000500.pt")
deepspeed.mark_complete(D / "0000500.pt")
result = [before, deepspeed.is_tag_complete(D, "0000500.pt")]
""")
    assert out.ok and out.result == [False, True], out  # a planted link vouches for nothing
    assert stat.S_ISREG(os.lstat(tag / MARKER).st_mode)
    box.assert_outside_unchanged()


def test_tag_directory_linked_outside_is_not_marked(box: Sandbox):
    _plant(box.run / "0000500.pt", box.outside / "dir")
    box.freeze()
    assert_clear(run_tracker(box.run, """
from bestckpt.integrations import deepspeed
deepspeed.mark_complete(D / "0000500.pt")
"""), "0000500.pt")
    assert not os.path.lexists(box.outside / "dir" / MARKER)
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- our own files as links
def test_lock_file_linked_to_a_file_outside_gives_a_clear_error(box: Sandbox):
    _plant(box.run / LOCK, box.outside / "victim.txt")
    box.freeze()
    assert_clear(run_tracker(box.run, ADD), LOCK)
    assert_cli_clear(run_cli("prune", str(box.run)), LOCK)
    _assert_untouched(box.run)
    assert os.path.islink(box.run / LOCK)
    box.assert_outside_unchanged()


def test_lock_file_dangling_link_outside_creates_nothing_there(box: Sandbox):
    _plant(box.run / LOCK, box.outside / "created-by-the-lock")
    box.freeze()
    assert_clear(run_tracker(box.run, ADD), LOCK)
    assert not os.path.lexists(box.outside / "created-by-the-lock")
    _assert_untouched(box.run)
    box.assert_outside_unchanged()


def test_journal_replaced_by_a_link_mid_run_is_never_appended_through(box: Sandbox):
    copy = box.outside / "journal.copy"
    box.freeze()
    out = run_tracker(box.run, f"""
t = BestCheckpointTracker(D, save_top_k=2, keep_every_n_steps=None, state_compact_bytes=1)
write(400)
t.update_checkpoint(400, None, D / "0000400.pt", {{"composite_score": 0.9}})
journal = D / "best_checkpoints.journal"
assert journal.is_file(), "the run must be journaling"
copy = Path({str(copy)!r})
copy.write_bytes(journal.read_bytes())  # a faithful copy: reading through the link would succeed
planted = copy.read_bytes()
os.unlink(journal)
os.symlink(copy, journal)
try:
    write(500)
    t.update_checkpoint(500, None, D / "0000500.pt", {{"composite_score": 0.95}})
    error = None
except Exception as exc:
    error = [type(exc).__name__, [c.__name__ for c in type(exc).__mro__], str(exc)]
result = [planted.hex(), error]
""")
    assert out.ok, out
    planted, error = out.result
    assert copy.read_bytes() == bytes.fromhex(planted), "the journal was appended through the planted link"
    assert error is not None, "an update through a planted journal link must be refused"
    assert_clear(Outcome(False, None, error[0], error[1], error[2], out.log), JOURNAL)
    assert {"0000200.pt", "0000400.pt"} <= _checkpoints(box.run)
    after = tree_digest(box.outside)
    after.pop("journal.copy")
    assert after == box._before
    assert os.path.islink(box.run / JOURNAL)


def test_state_file_linked_to_another_runs_state_is_refused(box: Sandbox):
    other = box.outside / "otherrun"
    make_run(other, {100: 0.9, 200: 0.1, 300: 0.2}, save_top_k=1)
    _plant(box.run / STATE, other / STATE)
    box.freeze()
    assert_clear(run_tracker(box.run, ADD), STATE)
    assert_cli_clear(run_cli("status", str(box.run)), STATE)
    _assert_untouched(box.run)
    box.assert_outside_unchanged()


def test_state_file_linked_to_dev_zero_is_refused_not_read(box: Sandbox):
    _plant(box.run / STATE, "/dev/zero")
    box.freeze()
    assert_clear(run_tracker(box.run, ADD), STATE)
    assert_cli_clear(run_cli("status", str(box.run)), STATE)
    _assert_untouched(box.run)
    box.assert_outside_unchanged()


def test_links_at_old_predictable_temp_names_of_our_files_are_never_followed(box: Sandbox):
    for name in (STATE + ".tmp", f".{STATE}.tmp", RESULTS + ".tmp", "best.pt.tmp", JOURNAL + ".tmp",
                 f".bestckpt-tmp.{STATE}", f".bestckpt-tmp.{RESULTS}", ".bestckpt-tmp.best.pt"):
        _plant(box.run / name, box.outside / "victim.txt")
    box.freeze()
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    box.assert_outside_unchanged()


def test_results_file_linked_outside_is_replaced_not_written_through(box: Sandbox):
    _plant(box.run / RESULTS, box.outside / "victim.txt")
    box.freeze()
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    assert stat.S_ISREG(os.lstat(box.run / RESULTS).st_mode)
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- best.pt and its pointer file
def test_best_link_to_a_binary_file_outside_is_repointed(box: Sandbox):
    _plant(box.run / "best.pt", box.outside / "blob.bin")
    box.freeze()
    assert json_status(box.run)["summary"]["best_step"] == 200
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    box.assert_outside_unchanged()


def test_pointer_file_linked_to_a_huge_file_is_ignored(box: Sandbox, tmp_path: Path):
    far = tmp_path / "far"
    far.mkdir()
    with open(far / "huge.bin", "wb") as fh:
        fh.truncate(4 << 30)
    before = os.lstat(far / "huge.bin")
    os.unlink(box.run / "best.pt")
    _plant(box.run / POINTER, far / "huge.bin")
    box.freeze()
    status = run_cli("status", "--json", str(box.run))
    assert status.returncode == 0, status.stdout
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    after = os.lstat(far / "huge.bin")
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- links at checkpoint names
def test_leftover_deletion_name_linked_outside_loses_only_the_link(box: Sandbox):
    _plant(box.run / ".bestckpt-deleting.0000100.pt.0123abcd", box.outside / "dir")
    _plant(box.run / ".bestckpt-tmp.0000100.pt.1.0123abcd", box.outside / "victim.txt")
    box.freeze()
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    assert not any(n.startswith(".bestckpt-") for n in os.listdir(box.run))
    box.assert_outside_unchanged()


def test_checkpoint_linked_outside_is_pruned_without_touching_its_target(box: Sandbox):
    weights = box.outside / "weights-350.pt"
    weights.write_text("weights 350 kept elsewhere")
    _plant(box.run / "0000350.pt", weights)
    box.freeze()
    out = run_tracker(box.run, OPEN + """
t.update_checkpoint(350, None, D / "0000350.pt", {"composite_score": 0.05})
write(400)
t.update_checkpoint(400, None, D / "0000400.pt", {"composite_score": 0.9})
result = t.best.step
""")
    assert out.ok and out.result == 400, out
    _assert_added(box.run)  # 300 and the link 350 pruned
    assert weights.read_text() == "weights 350 kept elsewhere"
    box.assert_outside_unchanged()
