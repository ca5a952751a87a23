"""Reading what may have been planted (fsio.read_regular & co.), publishing without following links, and
the directory fsyncs that make deletions and best.pt changes durable.

The end-to-end hostile situations (a tracker facing a FIFO state, a symlinked lock...) are in
tests/hostile/; these are the building blocks, in-process. Nothing here can block: special files are
refused on their ``lstat`` before any open, and opens use ``O_NONBLOCK``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bestckpt import errors, fsio
from bestckpt.tracking import bestlink, entries, layout, locking

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX special files")


def test_read_regular_reads_bounded_regular_files(tmp_path: Path):
    f = tmp_path / "state"
    f.write_bytes(b"0123456789")
    assert fsio.read_regular(f, 10) == b"0123456789"
    data, st = fsio.read_regular_stat(f, 10, offset=4)
    assert data == b"456789" and st.st_size == 10
    with pytest.raises(OSError, match="more than the 9 bytes") as info:
        fsio.read_regular(f, 9)
    assert str(f) in str(info.value) and "move it away" in str(info.value)
    with pytest.raises(FileNotFoundError):
        fsio.read_regular(tmp_path / "absent", 10)


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink", "dangling"])
def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str):
    target = tmp_path / "target"
    target.write_bytes(b"outside")
    f = tmp_path / "ours"
    {"fifo": lambda: os.mkfifo(f), "dir": f.mkdir, "symlink": lambda: os.symlink(target, f),
     "dangling": lambda: os.symlink(tmp_path / "nowhere", f)}[kind]()
    with pytest.raises(errors.UnsafeFileError) as info:
        fsio.read_regular(f, 100, error=errors.UnsafeFileError)
    message = str(info.value)
    assert str(f) in message and "not a regular file" in message and "move it away" in message
    assert isinstance(info.value, OSError) and isinstance(info.value, errors.BestckptError)
    with pytest.raises(OSError):  # the default error class: a plain OSError, same message
        fsio.read_regular(f, 100)
    assert target.read_bytes() == b"outside"


def test_check_regular_and_open_append_never_follow_links(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "journal"
    assert fsio.check_regular(link) is None
    os.symlink(victim, link)
    with pytest.raises(errors.UnsafeFileError, match="symbolic link"):
        fsio.check_regular(link, error=errors.UnsafeFileError)
    with pytest.raises(errors.UnsafeFileError, match="symbolic link"):
        fsio.open_append(link, error=errors.UnsafeFileError)
    assert victim.read_bytes() == b"precious"
    fresh = tmp_path / "fresh"
    fd = fsio.open_append(fresh)
    os.write(fd, b"line\n")
    os.close(fd)
    assert fresh.read_bytes() == b"line\n" and fsio.check_regular(fresh) is not None


def test_atomic_writer_replaces_links_refuses_directories_and_discards_on_error(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "results.json"
    os.symlink(victim, target)
    with fsio.atomic_writer(target) as fh:
        fh.write(b"new")
    assert not target.is_symlink() and target.read_bytes() == b"new" and victim.read_bytes() == b"precious"
    with pytest.raises(RuntimeError):
        with fsio.atomic_writer(target) as fh:
            fh.write(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(IsADirectoryError, match="move it away"):
        fsio.atomic_write_text(tmp_path / "dir.json", "x")
    assert sorted(os.listdir(tmp_path)) == ["dir.json", "results.json", "victim"]  # no temporaries left


def test_pointer_files_that_cannot_be_used_are_ignored_with_one_warning(tmp_path: Path, caplog):
    latest = tmp_path / "latest"
    latest.write_bytes(b"\xff\xfe\x80")
    with caplog.at_level(logging.WARNING, logger="bestckpt.tracking.layout"):
        assert layout.read_latest_tag(tmp_path) is None
        assert layout.read_latest_tag(tmp_path) is None
    assert [r.getMessage() for r in caplog.records].count(
        next(r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage())) == 1
    latest.unlink()
    os.mkfifo(latest)
    assert layout.read_latest_tag(tmp_path) is None
    latest.unlink()
    latest.write_text("0000300.pt\n")
    assert layout.read_latest_tag(tmp_path) == "0000300.pt"
    (tmp_path / "best.pt.txt").write_bytes(b"\x00\x01binary")
    assert bestlink.read_pointer(tmp_path / "best.pt") is None


def test_special_entries_named_like_checkpoints_are_skipped(tmp_path: Path, caplog):
    (tmp_path / "0000200.pt").write_bytes(b"w")
    (tmp_path / "0000300.pt").mkdir()
    os.symlink("0000200.pt", tmp_path / "0000400.pt")
    os.mkfifo(tmp_path / "0000100.pt")

    def parse(name: str) -> int | None:
        return int(name[:7]) if name[:7].isdigit() else None

    with caplog.at_level(logging.WARNING, logger="bestckpt.tracking.layout"):
        assert layout.step_entries(tmp_path, parse) == [(200, "0000200.pt"), (300, "0000300.pt"), (400, "0000400.pt")]
    assert any("0000100.pt" in r.getMessage() and "FIFO" in r.getMessage() for r in caplog.records)
    with pytest.raises(errors.UnsafeFileError, match="FIFO"):
        layout.checkpoint_relpath(tmp_path, tmp_path / "0000100.pt", "0000100.pt", 100, must_exist=True)


def test_lock_file_must_be_a_regular_file(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, tmp_path / layout.LOCK_FILE)
    lock = locking.lock(tmp_path, timeout=0.1)
    with pytest.raises(errors.UnsafeFileError, match="move it away"):
        lock.acquire()
    assert victim.read_bytes() == b"precious" and not lock.is_locked
    os.unlink(tmp_path / layout.LOCK_FILE)
    with lock:
        assert lock.is_locked
    assert not lock.is_locked


def test_deletions_and_best_link_changes_fsync_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    synced: list[str] = []

    def record(directory):
        synced.append(os.path.realpath(directory))

    monkeypatch.setattr(entries, "fsync_dir", record)
    monkeypatch.setattr(bestlink, "fsync_dir", record)
    root = os.path.realpath(tmp_path)
    (tmp_path / "0000100.pt").write_bytes(b"w")
    (tmp_path / "0000200.pt").mkdir()
    (tmp_path / "0000200.pt" / "shard").write_bytes(b"w")
    assert entries.delete_entry(tmp_path, "0000100.pt") and synced == [root]
    assert entries.delete_entry(tmp_path, "0000200.pt") and synced == [root, root]
    (tmp_path / "0000300.pt").write_bytes(b"w")
    bestlink.atomic_symlink(tmp_path / "best.pt", "0000300.pt")
    bestlink.remove_link(tmp_path / "best.pt")
    assert synced == [root] * 4 and not os.path.lexists(tmp_path / "best.pt")
