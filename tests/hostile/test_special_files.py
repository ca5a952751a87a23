"""Special files where bestckpt's own files should be: FIFOs, sockets, directories, devices, huge or binary files.

Each test plants one, then runs the tracker (and where it matters ``bestckpt status``) in a
subprocess bounded in time and memory (tests/support/hostile_fs.py), and checks: no hang, no
unbounded read, a clear error naming the file and the fix (our state, journal, lock, results) or
the file ignored with a warning (pointer files: DeepSpeed's ``latest``, ``best.pt.txt``), nothing
needed deleted, nothing outside the directory changed.
"""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hostile_fs import (
    Sandbox,
    assert_clear,
    assert_cli_clear,
    json_status,
    make_run,
    pointed,
    run_cli,
    run_tracker,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")

STATE, JOURNAL, LOCK = "best_checkpoints.json", "best_checkpoints.journal", "best_checkpoints.json.lock"
RESULTS, POINTER = "best_checkpoint_results.json", "best.pt.txt"
SCORES = {100: 0.1, 200: 0.5, 300: 0.3}  # top-2: 200 (best) and 300 (also the latest); 100 pruned
OPEN = "t = BestCheckpointTracker(D, save_top_k=2, keep_every_n_steps=None)\n"
ADD = OPEN + """
write(400)
t.update_checkpoint(400, None, D / "0000400.pt", {"composite_score": 0.9})
result = t.best.step
"""
HUGE = 4 << 30  # a sparse file: no disk space, but reading it whole exceeds the subprocess's memory


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    sandbox = Sandbox(tmp_path)
    make_run(sandbox.run, SCORES, save_top_k=2)
    sandbox.freeze()
    return sandbox


def _checkpoints(d: Path) -> set[str]:
    return {n for n in os.listdir(d) if n.endswith(".pt") and n != "best.pt"}


def _assert_added(d: Path) -> None:
    """The update went through: 400 is best, best.pt points at it, retention still works (300 went)."""
    assert pointed(d / "best.pt") == "0000400.pt"
    assert _checkpoints(d) == {"0000200.pt", "0000400.pt"}
    assert (d / "0000200.pt").read_text() == "weights 200"


def _assert_untouched(d: Path) -> None:
    """A refused call deleted nothing: the run's checkpoints and best.pt are as they were."""
    assert _checkpoints(d) == {"0000200.pt", "0000300.pt"}
    assert pointed(d / "best.pt") == "0000200.pt"


def _warned(outcome, name: str) -> bool:
    return any(line.startswith("WARNING") and name in line for line in outcome.log.splitlines())


# -------------------------------------------------------------------------- DeepSpeed's `latest`
def test_fifo_as_deepspeed_latest_is_ignored_with_a_warning(box: Sandbox):
    os.mkfifo(box.run / "latest")
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, "latest"), out
    _assert_added(box.run)
    assert stat.S_ISFIFO(os.lstat(box.run / "latest").st_mode)  # not ours: left alone
    assert json_status(box.run)["summary"]["best_step"] == 400
    box.assert_outside_unchanged()


def test_fifo_as_latest_does_not_hang_deepspeed_tag_completeness(box: Sandbox):
    (box.run / "0000500.pt").mkdir()  # a DeepSpeed tag without marker: only `latest` could vouch for it
    os.mkfifo(box.run / "latest")
    out = run_tracker(box.run, """
from bestckpt.integrations import deepspeed
from bestckpt.tracking import layout
result = [deepspeed.is_tag_complete(D, "0000500.pt"), deepspeed.read_latest_tag(D),
          [(s, c) for s, _, c in layout.find_checkpoints(D, lambda n: int(n[:7]) if n[:7].isdigit() else None)]]
""")
    assert out.ok, out
    assert out.result == [False, None, [[200, True], [300, True], [500, False]]]
    box.assert_outside_unchanged()


def test_latest_symlink_to_dev_zero_is_not_read_without_bound(box: Sandbox):
    os.symlink("/dev/zero", box.run / "latest")
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, "latest"), out
    _assert_added(box.run)
    assert json_status(box.run)["summary"]["best_step"] == 400
    box.assert_outside_unchanged()


def test_latest_symlink_to_dev_urandom_is_ignored(box: Sandbox):
    os.symlink("/dev/urandom", box.run / "latest")
    out = run_tracker(box.run, OPEN + """
from bestckpt.tracking import layout
result = [layout.read_latest_tag(D), [r.step for r in t.plan() if r.keep]]
""")
    assert out.ok and out.result == [None, [200, 300]], out
    assert os.readlink(box.run / "latest") == "/dev/urandom"
    _assert_untouched(box.run)
    box.assert_outside_unchanged()


def test_huge_latest_file_is_ignored_not_read_whole(box: Sandbox):
    with open(box.run / "latest", "wb") as fh:
        fh.truncate(HUGE)
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, "latest"), out
    _assert_added(box.run)
    assert os.path.getsize(box.run / "latest") == HUGE
    box.assert_outside_unchanged()


def test_latest_with_non_utf8_bytes_is_ignored_with_a_warning(box: Sandbox):
    (box.run / "latest").write_bytes(b"\xff\xfe0000300.pt\x80\n")
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, "latest"), out
    _assert_added(box.run)
    assert (box.run / "latest").read_bytes() == b"\xff\xfe0000300.pt\x80\n"  # not ours: never rewritten
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- best.pt.txt
def test_fifo_as_pointer_file_never_blocks_updates(box: Sandbox):
    os.unlink(box.run / "best.pt")  # so that the pointer file is what tells where best.pt was
    os.mkfifo(box.run / POINTER)
    assert json_status(box.run)["summary"]["best_step"] == 200
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    box.assert_outside_unchanged()


def test_binary_pointer_file_never_wedges_updates(box: Sandbox):
    os.unlink(box.run / "best.pt")
    (box.run / POINTER).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x80binary")
    status = run_cli("status", "--json", str(box.run))
    assert status.returncode == 0, status.stdout
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, POINTER), out
    _assert_added(box.run)
    box.assert_outside_unchanged()


def test_binary_pointer_file_is_replaced_where_symlinks_are_impossible(box: Sandbox):
    os.unlink(box.run / "best.pt")
    (box.run / POINTER).write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a path \x80")
    out = run_tracker(box.run, """
import errno
def no_symlinks(*args, **kwargs):
    raise OSError(errno.EPERM, "symlinks are not supported here")
os.symlink = no_symlinks  # a filesystem without symlinks: bestckpt writes best.pt.txt instead
""" + ADD)
    assert out.ok and out.result == 400, out
    assert _warned(out, POINTER), out
    assert (box.run / POINTER).read_text() == "0000400.pt\n"  # ours: replaced
    assert _checkpoints(box.run) == {"0000200.pt", "0000400.pt"}
    box.assert_outside_unchanged()


def test_directory_as_pointer_file_is_left_alone(box: Sandbox):
    os.unlink(box.run / "best.pt")
    (box.run / POINTER).mkdir()
    (box.run / POINTER / "notes.txt").write_text("someone's notes")
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    assert (box.run / POINTER / "notes.txt").read_text() == "someone's notes"
    assert json_status(box.run)["best_link"] == "0000400.pt"
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- the state and its journal
def test_fifo_as_state_file_gives_a_clear_error(box: Sandbox):
    os.unlink(box.run / STATE)
    os.mkfifo(box.run / STATE)
    assert_clear(run_tracker(box.run, ADD), STATE)
    assert_cli_clear(run_cli("status", str(box.run)), STATE)
    assert_cli_clear(run_cli("prune", str(box.run)), STATE)
    _assert_untouched(box.run)
    assert stat.S_ISFIFO(os.lstat(box.run / STATE).st_mode)
    box.assert_outside_unchanged()


def test_fifo_as_journal_gives_a_clear_error(box: Sandbox):
    os.mkfifo(box.run / JOURNAL)  # beside a valid snapshot
    assert_clear(run_tracker(box.run, ADD), JOURNAL)
    assert_cli_clear(run_cli("status", str(box.run)), JOURNAL)
    _assert_untouched(box.run)
    assert stat.S_ISFIFO(os.lstat(box.run / JOURNAL).st_mode)
    box.assert_outside_unchanged()


def test_directory_as_state_file_gives_a_clear_error(box: Sandbox):
    os.unlink(box.run / STATE)
    (box.run / STATE).mkdir()
    (box.run / STATE / "keep.txt").write_text("not ours")
    assert_clear(run_tracker(box.run, ADD), STATE)
    assert_cli_clear(run_cli("status", str(box.run)), STATE)
    _assert_untouched(box.run)
    assert (box.run / STATE / "keep.txt").read_text() == "not ours"
    box.assert_outside_unchanged()


def test_socket_as_state_file_gives_a_clear_error(box: Sandbox, monkeypatch: pytest.MonkeyPatch):
    os.unlink(box.run / STATE)
    monkeypatch.chdir(box.run)  # a short relative address: AF_UNIX paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(STATE)
        assert_clear(run_tracker(box.run, ADD), STATE)
        assert_cli_clear(run_cli("status", str(box.run)), STATE)
    _assert_untouched(box.run)
    assert stat.S_ISSOCK(os.lstat(box.run / STATE).st_mode)
    box.assert_outside_unchanged()


def test_huge_state_file_gives_a_clear_error_not_an_unbounded_read(box: Sandbox):
    os.unlink(box.run / STATE)
    with open(box.run / STATE, "wb") as fh:
        fh.truncate(HUGE)
    assert_clear(run_tracker(box.run, ADD), STATE)
    assert_cli_clear(run_cli("status", str(box.run)), STATE)
    _assert_untouched(box.run)
    assert os.path.getsize(box.run / STATE) == HUGE  # never moved aside or rewritten: the user decides
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- the lock and the results file
def test_directory_as_lock_file_gives_a_clear_error_at_once(box: Sandbox):
    os.unlink(box.run / LOCK)
    (box.run / LOCK).mkdir()
    # lock_timeout far beyond the subprocess's timeout: waiting for the lock would fail the test
    out = run_tracker(box.run, ADD.replace("keep_every_n_steps=None", "keep_every_n_steps=None, lock_timeout=3600"))
    assert_clear(out, LOCK)
    _assert_untouched(box.run)
    box.assert_outside_unchanged()


def test_directory_as_results_file_gives_a_clear_error(box: Sandbox):
    os.unlink(box.run / RESULTS)
    (box.run / RESULTS).mkdir()
    (box.run / RESULTS / "keep.txt").write_text("not ours")
    assert_clear(run_tracker(box.run, ADD), RESULTS)
    assert (box.run / RESULTS / "keep.txt").read_text() == "not ours"
    _assert_untouched(box.run)  # refused when the tracker opens the directory, before any retention ran
    assert json_status(box.run)["summary"]["best_step"] == 200  # read-only commands never need it
    box.assert_outside_unchanged()


def test_fifo_as_results_file_is_replaced_without_blocking(box: Sandbox):
    os.unlink(box.run / RESULTS)
    os.mkfifo(box.run / RESULTS)
    out = run_tracker(box.run, ADD)
    assert out.ok and out.result == 400, out
    _assert_added(box.run)
    assert stat.S_ISREG(os.lstat(box.run / RESULTS).st_mode)
    box.assert_outside_unchanged()


# -------------------------------------------------------------------------- step-named special entries
def test_fifo_named_like_a_checkpoint_is_never_adopted_or_registered(tmp_path: Path):
    box = Sandbox(tmp_path)
    box.freeze()
    for step in (200, 300):
        (box.run / f"{step:07d}.pt").write_text(f"weights {step}")
    os.mkfifo(box.run / "0000100.pt")
    out = run_tracker(box.run, OPEN + "result = sorted(r.step for r in t.records if not r.pruned)")
    assert out.ok and out.result == [200, 300], out  # rebuilt from disk without the FIFO
    assert _warned(out, "0000100.pt"), out
    out = run_tracker(box.run, OPEN + "t.checkpoint_saved(100, D / '0000100.pt')")
    assert_clear(out, "0000100.pt")
    out = run_tracker(box.run, OPEN + """
t.update_checkpoint(200, None, D / "0000200.pt", {"composite_score": 0.5})
t.update_checkpoint(300, None, D / "0000300.pt", {"composite_score": 0.3})
result = t.best.step
""")
    assert out.ok and out.result == 200, out
    assert json_status(box.run)["summary"]["best_step"] == 200
    assert stat.S_ISFIFO(os.lstat(box.run / "0000100.pt").st_mode)  # not ours: left alone
    assert _checkpoints(box.run) == {"0000100.pt", "0000200.pt", "0000300.pt"}
    box.assert_outside_unchanged()
