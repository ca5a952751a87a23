"""Filesystem bookkeeping: strict atomic JSON, atomic best link, the lock, confined deletion."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
from pathlib import Path

import filelock
import pytest

from bestckpt import errors, fsio
from bestckpt.tracking import bestlink, entries, journal, layout, locking


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_encodes_nonfinite_as_strings_and_round_trips():
    obj = {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "e": [math.nan], "f": None}
    text = fsio.to_strict_json(obj)
    assert "NaN" in text and "Infinity" in text
    back = _strict_loads(text)
    assert back["a"] == "NaN" and back["b"] == "Infinity" and back["c"] == "-Infinity"
    assert math.isnan(fsio.float_from_json(back["a"]))
    assert fsio.float_from_json(back["b"]) == math.inf and fsio.float_from_json(back["c"]) == -math.inf
    assert fsio.float_from_json(back["d"]) == 1.5 and fsio.float_from_json(None) is None
    for bad in ("nan", "x", True, [1]):
        with pytest.raises(ValueError):
            fsio.float_from_json(bad)


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path: Path):
    target = tmp_path / "state.json"
    fsio.atomic_write_json(target, {"v": 1})
    fsio.atomic_write_json(target, {"v": 2, "x": math.nan})
    assert _strict_loads(target.read_text())["v"] == 2
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_atomic_write_failure_keeps_old_file_and_cleans_temp(tmp_path: Path):
    target = tmp_path / "state.json"
    target.mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(OSError):
        fsio.atomic_write_text(target, "new")
    assert target.is_dir() and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_atomic_symlink_is_relative_and_swapped(tmp_path: Path):
    (tmp_path / "0001000.pt").write_bytes(b"a")
    (tmp_path / "0002000.pt").mkdir()
    link = tmp_path / "best.pt"
    assert bestlink.atomic_symlink(link, "0001000.pt") == "symlink"
    assert os.readlink(link) == "0001000.pt" and link.read_bytes() == b"a"
    bestlink.atomic_symlink(link, "0002000.pt", target_is_directory=True)
    assert os.readlink(link) == "0002000.pt" and link.is_dir()
    assert bestlink.read_pointer(link) == "0002000.pt"
    assert sorted(os.listdir(tmp_path)) == ["0001000.pt", "0002000.pt", "best.pt"]


@pytest.mark.parametrize("target", ["/etc/passwd", "../x", "a/../../x"])
def test_atomic_symlink_refuses_escaping_targets(tmp_path: Path, target: str):
    with pytest.raises(errors.UnsafePathError):
        bestlink.atomic_symlink(tmp_path / "best.pt", target)


def test_atomic_symlink_never_overwrites_a_real_file(tmp_path: Path):
    (tmp_path / "best.pt").write_bytes(b"user's own file")
    with pytest.raises(FileExistsError, match="not a symlink"):
        bestlink.atomic_symlink(tmp_path / "best.pt", "0001000.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"user's own file"


def test_pointer_file_fallback_where_symlinks_are_impossible(tmp_path: Path, monkeypatch):
    # Fault injection: this filesystem refuses symlinks (as FAT/some Windows setups do).
    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    (tmp_path / "0001000.pt").write_bytes(b"a")
    assert bestlink.atomic_symlink(tmp_path / "best.pt", "0001000.pt") == "pointer"
    assert (tmp_path / "best.pt.txt").read_text().strip() == "0001000.pt"
    assert bestlink.read_pointer(tmp_path / "best.pt") == "0001000.pt"
    assert not (tmp_path / "best.pt").exists()


def _hold_lock(directory: str, ready, release) -> None:
    with locking.lock(Path(directory)):
        ready.set()
        release.wait(300)


def test_lock_excludes_another_process(tmp_path: Path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(300)
        with pytest.raises(filelock.Timeout):  # held until we set `release`: a short timeout must expire
            locking.lock(tmp_path, timeout=0.2).acquire()
    finally:
        release.set()
        proc.join(300)
    assert proc.exitcode == 0
    with locking.lock(tmp_path, timeout=300):  # released by the holder: taken (the bound only catches a hang)
        pass


def _hold_lock_forever(directory: str, ready) -> None:
    locking.lock(Path(directory)).acquire()
    ready.set()
    signal.pause()  # until the test kills it


def test_lock_is_released_when_holder_is_killed(tmp_path: Path):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock_forever, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(300)
    proc.kill()
    proc.join(300)
    with locking.lock(tmp_path, timeout=300):
        pass


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", "", ".", "..", "sub/../../x"])
def test_confine_refuses_escapes(tmp_path: Path, rel: str):
    with pytest.raises(errors.UnsafePathError):
        entries.confine(tmp_path, rel)


def test_confine_refuses_symlinked_parent(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "victim.pt").write_bytes(b"precious")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(errors.UnsafePathError, match="outside"):
        entries.delete_entry(root, "sub/victim.pt")
    assert (outside / "victim.pt").read_bytes() == b"precious"
    assert entries.confine(root, "0001000.pt") == root / "0001000.pt"


def test_delete_entry_file_dir_and_symlink_never_followed(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "target.pt").write_bytes(b"precious")
    (root / "0001000.pt").write_bytes(b"x")
    tag = root / "0002000.pt"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"m")
    (tag / "link_out").symlink_to(outside / "target.pt")  # a symlink inside a tag directory
    (root / "0003000.pt").symlink_to(outside / "target.pt")  # a checkpoint entry that is a symlink
    assert entries.delete_entry(root, "0001000.pt")
    assert entries.delete_entry(root, "0002000.pt")
    assert entries.delete_entry(root, "0003000.pt")
    assert not entries.delete_entry(root, "0004000.pt")
    assert os.listdir(root) == []
    assert (outside / "target.pt").read_bytes() == b"precious"


def test_cleanup_temporaries_only_removes_ours(tmp_path: Path):
    (tmp_path / ".bestckpt-tmp.best_checkpoints.json.1.abc").write_text("{")
    (tmp_path / ".bestckpt-tmp.best.pt.1.abc").symlink_to("nowhere")
    half = tmp_path / ".bestckpt-deleting.0001000.pt.abc"
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"m")
    (tmp_path / ".hidden_user_file").write_text("keep")
    (tmp_path / "0001000.pt.tmp").write_text("keep")
    removed = entries.cleanup_temporaries(tmp_path)
    assert len(removed) == 3
    assert sorted(os.listdir(tmp_path)) == [".hidden_user_file", "0001000.pt.tmp"]


def _snapshot_text(records: list[dict], **header) -> str:
    body = {"schema": "bestckpt.state/1", **header}
    return json.dumps(body)[:-1] + ',"checkpoints":' + json.dumps(records)


def test_state_file_journal_append_merge_and_compaction(tmp_path: Path):
    sf = journal.StateFile(tmp_path, compact_bytes=0)
    sf.write_full(_snapshot_text([{"step": 1, "v": 1}], best_step=1))
    assert not sf.needs_full_write()
    sf.append(json.dumps({"header": {"best_step": 2}, "records": [{"step": 2, "v": 2}]}))
    sf.append(json.dumps({"header": {"best_step": 1}, "records": [{"step": 1, "v": 3}]}))
    state = journal.read_state(tmp_path)
    assert state["best_step"] == 1 and state["checkpoints"] == [{"step": 1, "v": 3}, {"step": 2, "v": 2}]
    # incremental read by another reader sees only the new lines
    other = journal.StateFile(tmp_path)
    snap = other.read_snapshot()
    jid = json.loads(snap[0])["journal_id"]
    assert len(other.read_journal(jid)) == 2
    sf.append(json.dumps({"header": {}, "records": [{"step": 3}]}))
    assert other.read_journal(jid, incremental=True) == [{"header": {}, "records": [{"step": 3}]}]
    # compaction: a new snapshot id makes the old journal irrelevant and removes it
    sf.write_full(_snapshot_text([{"step": 9}]))
    assert not (tmp_path / layout.JOURNAL_FILE).exists()
    assert journal.read_state(tmp_path)["checkpoints"] == [{"step": 9}]
    assert other.read_journal(jid, incremental=True) is None  # the journal it followed is gone


def test_state_file_torn_tail_and_stale_journal(tmp_path: Path):
    sf = journal.StateFile(tmp_path, compact_bytes=0)
    sf.write_full(_snapshot_text([{"step": 1}]))
    sf.append(json.dumps({"header": {}, "records": [{"step": 2}]}))
    with open(tmp_path / layout.JOURNAL_FILE, "ab") as fh:
        fh.write(b'{"header": {}, "records": [{"st')  # a crash mid-append
    reader = journal.StateFile(tmp_path)
    jid = json.loads(reader.read_snapshot()[0])["journal_id"]
    assert reader.read_journal(jid) == [{"header": {}, "records": [{"step": 2}]}] and reader.torn
    assert reader.needs_full_write()  # a writer rewrites instead of appending after torn bytes
    assert [r["step"] for r in journal.read_state(tmp_path)["checkpoints"]] == [1, 2]
    # a journal from before a compaction (other id) is ignored
    (tmp_path / layout.JOURNAL_FILE).write_text('{"journal_id": "old"}\n{"header": {}, "records": [{"step": 7}]}\n')
    assert [r["step"] for r in journal.read_state(tmp_path)["checkpoints"]] == [1]
    (tmp_path / layout.JOURNAL_FILE).write_text(f'{{"journal_id": "{jid}"}}\nnot json\n{{}}\n')
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        journal.StateFile(tmp_path).read_journal(jid)


def test_step_entries_is_the_one_scan_and_find_checkpoints_filters_it(tmp_path: Path):
    """step_entries lists every step-named entry (symlinks too: the state may track one), by name;
    find_checkpoints leaves out symlinks and *.tmp and orders by step."""
    from bestckpt.tracking.config import TrackerConfig

    parse = TrackerConfig(checkpoint_dir=tmp_path, filename_template="{step}.pt").step_from_name
    (tmp_path / "900.pt").write_bytes(b"c")
    (tmp_path / "1000.pt").mkdir()
    (tmp_path / "1100.pt").symlink_to("900.pt")
    (tmp_path / "1200.pt.tmp").write_bytes(b"half")
    (tmp_path / "0900.pt").write_bytes(b"not the template's name for step 900")
    (tmp_path / "notes.txt").write_text("x")
    assert layout.step_entries(tmp_path, parse) == [(1000, "1000.pt"), (1100, "1100.pt"), (900, "900.pt")]
    found = layout.find_checkpoints(tmp_path, parse)
    assert [(s, p.name, c) for s, p, c in found] == [(900, "900.pt", True), (1000, "1000.pt", False)]
    with pytest.raises(OSError):
        layout.step_entries(tmp_path / "missing", parse)
    assert layout.find_checkpoints(tmp_path / "missing", parse) == []


def test_read_latest_tag_never_raises(tmp_path: Path):
    assert layout.read_latest_tag(tmp_path) is None
    (tmp_path / "latest").write_text("  \n")
    assert layout.read_latest_tag(tmp_path) is None
    (tmp_path / "latest").write_bytes(b"\xff\xfe")
    assert layout.read_latest_tag(tmp_path) is None
    (tmp_path / "latest").write_text("0000300.pt\n")
    assert layout.read_latest_tag(tmp_path) == "0000300.pt"
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()
    assert layout.read_latest_tag(tmp_path) is None
