"""Bad inputs: each gives a clear message, touches nothing outside the directory, loses nothing."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bestckpt.errors import ConfigError
from bestckpt.tracking.tracker import BestCheckpointTracker, StateError


def save(ckdir: Path, step: int, tag: bool = False) -> Path:
    path = ckdir / f"{step:07d}.pt"
    if tag:
        path.mkdir(parents=True)
        (path / "mp_rank_00_model_states.pt").write_bytes(b"m%d" % step)
    else:
        path.write_bytes(b"step %d" % step)
    return path


def strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"bare {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def populated(ckdir: Path) -> BestCheckpointTracker:
    """Steps 1..4 scored 0.4, 0.9, 0.6, 0.5 with top-2: 2 (best), 3 and 4 (latest) on disk."""
    tracker = BestCheckpointTracker(ckdir, save_top_k=2, keep_every_n_steps=None)
    for step, score in [(1, 0.4), (2, 0.9), (3, 0.6), (4, 0.5)]:
        save(ckdir, step, tag=step % 2 == 0)
        tracker.update_checkpoint(step, 0, None, {"composite_score": score, "fid": 10.0 * step})
    assert sorted(os.listdir(ckdir)) == ["0000002.pt", "0000003.pt", "0000004.pt", "best.pt",
                                         "best_checkpoint_results.json", "best_checkpoints.json",
                                         "best_checkpoints.json.lock"]
    return tracker


def ckpts(ckdir: Path) -> set[str]:
    return {n for n in os.listdir(ckdir) if n[:7].isdigit()}


@pytest.mark.parametrize(
    "content",
    [b"\x00\xff garbage", b"", "truncated", b"[1, 2, 3]", b'{"foo": 1}', b'{"schema": "someone.else/1", "checkpoints": []}',
     b'{"schema": "bestckpt.state/1", "checkpoints": 5}'],
    ids=["garbage", "empty", "truncated", "list", "foreign-object", "foreign-schema", "bad-checkpoints"],
)
def test_unreadable_state_is_moved_aside_and_rebuilt_from_disk(tmp_path: Path, content, caplog):
    populated(tmp_path)
    state = tmp_path / "best_checkpoints.json"
    if content == "truncated":
        content = state.read_bytes()[: state.stat().st_size // 2]
    state.write_bytes(content)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    aside = [n for n in os.listdir(tmp_path) if n.startswith("best_checkpoints.json.corrupt-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == content  # nothing lost
    assert any("unreadable" in m and aside[0] in m for m in caplog.messages)
    recs = {r.step: r for r in tracker.records}
    assert sorted(recs) == [2, 3, 4] and all(r.status == "saved" and r.info.get("recovered") for r in recs.values())
    # New checkpoints are handled; the recovered ones are protected until re-evaluated, never orphaned or lost.
    save(tmp_path, 5)
    tracker.update_checkpoint(5, 0, None, {"composite_score": 0.1})
    assert ckpts(tmp_path) == {"0000002.pt", "0000003.pt", "0000004.pt", "0000005.pt"}
    reasons = {d.step: d.reasons for d in tracker.plan()}
    assert "recovered" in reasons[2][0]
    tracker.update_checkpoint(3, 0, None, {"composite_score": 0.05})  # re-evaluated: now ordinary
    save(tmp_path, 6)
    tracker.update_checkpoint(6, 0, None, {"composite_score": 0.2})
    assert ckpts(tmp_path) == {"0000002.pt", "0000004.pt", "0000005.pt", "0000006.pt"}
    strict_json(tmp_path / "best_checkpoints.json")


def test_state_from_a_newer_version_is_refused_untouched(tmp_path: Path):
    populated(tmp_path)
    state = tmp_path / "best_checkpoints.json"
    data = json.loads(state.read_text())
    data["schema"] = "bestckpt.state/2"
    state.write_text(json.dumps(data))
    before = state.read_bytes()
    with pytest.raises(StateError, match="newer than this bestckpt.*upgrade"):
        BestCheckpointTracker(tmp_path, save_top_k=2)
    assert state.read_bytes() == before and ckpts(tmp_path) == {"0000002.pt", "0000003.pt", "0000004.pt"}


@pytest.mark.parametrize(
    "metrics,why",
    [
        ({"composite_score": math.nan}, "is nan"),
        ({"composite_score": math.inf}, "is inf"),
        ({"composite_score": -math.inf}, "is -inf"),
        ({"clip_score": 0.9}, "missing"),
        ({"composite_score": None}, "not a number"),
        (None, "must be a mapping"),
    ],
    ids=["nan", "inf", "-inf", "missing", "none", "no-mapping"],
)
def test_bad_scores_become_failed_records_never_best(tmp_path: Path, metrics, why, caplog):
    tracker = populated(tmp_path)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    save(tmp_path, 5)
    assert tracker.update_checkpoint(5, 0, None, metrics) is False  # no exception into training
    rec = {r.step: r for r in tracker.records}[5]
    assert rec.status == "failed" and why in rec.error
    assert any(why in m for m in caplog.messages)
    assert tracker.best.step == 2 and os.readlink(tmp_path / "best.pt") == "0000002.pt"
    assert "0000005.pt" in ckpts(tmp_path)  # the newest stays (resume point)
    save(tmp_path, 6)
    tracker.update_checkpoint(6, 0, None, {"composite_score": 0.0})
    assert "0000005.pt" not in ckpts(tmp_path)  # a failed evaluation is never in the top-k
    state = strict_json(tmp_path / "best_checkpoints.json")
    assert [r for r in state["checkpoints"] if r["step"] == 5][0]["status"] == "failed"


def test_a_string_score_is_refused_at_the_call(tmp_path: Path):
    """Text is never a score (it would not survive a reload as one): refused, nothing recorded."""
    tracker = populated(tmp_path)
    state = (tmp_path / "best_checkpoints.json").read_bytes()
    save(tmp_path, 5)
    with pytest.raises(ConfigError, match="metric 'composite_score' has value 'high' .*float"):
        tracker.update_checkpoint(5, 0, None, {"composite_score": "high"})
    assert (tmp_path / "best_checkpoints.json").read_bytes() == state and 5 not in {r.step for r in tracker.records}
    assert tracker.best.step == 2 and os.readlink(tmp_path / "best.pt") == "0000002.pt"


def test_nonfinite_nontracked_metrics_are_stored_strictly(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path)
    save(tmp_path, 1)
    assert tracker.update_checkpoint(1, 0, None, {"composite_score": 0.5, "fid": math.inf, "kid": math.nan})
    state = strict_json(tmp_path / "best_checkpoints.json")
    assert state["checkpoints"][0]["metrics"] == {"composite_score": 0.5, "fid": "Infinity", "kid": "NaN"}
    again = BestCheckpointTracker(tmp_path)
    assert again.best.metrics["fid"] == math.inf and math.isnan(again.best.metrics["kid"])


def test_duplicate_step_rescore_replaces_and_duplicates_in_state_resolve(tmp_path: Path, caplog):
    tracker = populated(tmp_path)
    caplog.set_level(logging.INFO, logger="bestckpt")
    tracker.update_checkpoint(3, 0, None, {"composite_score": 0.95})
    assert tracker.best.step == 3 and any("step 3 re-scored" in m for m in caplog.messages)
    assert len([r for r in tracker.records if r.step == 3]) == 1
    state = tmp_path / "best_checkpoints.json"
    data = json.loads(state.read_text())
    data["checkpoints"].append(dict(data["checkpoints"][2], metrics={"composite_score": 0.2}))
    state.write_text(json.dumps(data))
    again = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    assert any("lists step 3 twice" in m for m in caplog.messages)
    assert again.best.step == 2


def test_bad_arguments_raise_with_the_value_and_the_fix(tmp_path: Path):
    tracker = populated(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pt"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError, match="not inside checkpoint_dir"):
        tracker.update_checkpoint(7, 0, outside, {"composite_score": 1.0})
    with pytest.raises(ValueError, match="not inside checkpoint_dir"):
        tracker.checkpoint_saved(7, "../" + outside.name)
    with pytest.raises(FileNotFoundError, match="0000007.pt of step 7 does not exist"):
        tracker.update_checkpoint(7, 0, None, {"composite_score": 1.0})
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        tracker.update_checkpoint(-1, 0, None, {"composite_score": 1.0})
    with pytest.raises(TypeError, match="step must be an int, got '5'"):
        tracker.checkpoint_saved("5")
    assert outside.read_bytes() == b"x" and tracker.best.step == 2


def test_checkpoint_deleted_by_hand(tmp_path: Path, caplog):
    populated(tmp_path)
    shutil.rmtree(tmp_path / "0000002.pt")  # the best, deleted by hand
    caplog.set_level(logging.WARNING, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    assert any("0000002.pt (step 2) was deleted outside bestckpt" in m for m in caplog.messages)
    assert tracker.best.step == 3 and os.readlink(tmp_path / "best.pt") == "0000003.pt"
    rec = {r.step: r for r in tracker.records}[2]
    assert rec.pruned and rec.info["removed"] == "missing on disk" and rec.metrics["composite_score"] == 0.9


def test_checkpoint_deleted_by_hand_while_running(tmp_path: Path, caplog):
    tracker = populated(tmp_path)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    shutil.rmtree(tmp_path / "0000002.pt")
    save(tmp_path, 5)
    tracker.update_checkpoint(5, 0, None, {"composite_score": 0.3})
    assert any("was deleted outside bestckpt" in m for m in caplog.messages)
    assert os.readlink(tmp_path / "best.pt") == "0000003.pt" and (tmp_path / "best.pt").exists()


def test_state_entries_pointing_outside_are_refused(tmp_path: Path, caplog):
    ckdir, outside = tmp_path / "ck", tmp_path / "outside"
    populated(ckdir)
    outside.mkdir()
    victim_rel, victim_abs = outside / "victim.pt", outside / "abs.pt"
    victim_rel.write_bytes(b"precious")
    victim_abs.write_bytes(b"precious")
    state = ckdir / "best_checkpoints.json"
    data = json.loads(state.read_text())
    data["checkpoints"] += [
        {"step": 50, "epoch": 0, "checkpoint_path": "../outside/victim.pt", "metrics": {"composite_score": 99.0},
         "status": "evaluated", "timestamp": 0.0},
        {"step": 60, "epoch": 0, "checkpoint_path": str(victim_abs), "metrics": {"composite_score": 98.0},
         "status": "evaluated", "timestamp": 0.0},
    ]
    state.write_text(json.dumps(data))
    caplog.set_level(logging.ERROR, logger="bestckpt")
    tracker = BestCheckpointTracker(ckdir, save_top_k=1, keep_every_n_steps=None, reconfigure=True)
    refused = [m for m in caplog.messages if "refused" in m]
    assert any("step 50" in m and "../outside/victim.pt" in m for m in refused)
    assert any("step 60" in m and "absolute" in m for m in refused)
    assert tracker.best.step == 2  # a refused entry is never best
    save(ckdir, 70)
    tracker.update_checkpoint(70, 0, None, {"composite_score": 0.0})
    tracker.prune()
    assert victim_rel.read_bytes() == b"precious" and victim_abs.read_bytes() == b"precious"
    kept = {r["step"]: r for r in json.loads(state.read_text())["checkpoints"]}
    assert kept[50]["checkpoint_path"] == "../outside/victim.pt" and kept[60]["checkpoint_path"] == str(victim_abs)


def test_symlinked_checkpoint_pointing_outside_loses_only_the_link(tmp_path: Path):
    ckdir, outside = tmp_path / "ck", tmp_path / "outside"
    ckdir.mkdir(), outside.mkdir()
    (outside / "real.pt").write_bytes(b"precious")
    (ckdir / "0000001.pt").symlink_to(outside / "real.pt")
    tracker = BestCheckpointTracker(ckdir, save_top_k=1, keep_every_n_steps=None)
    tracker.update_checkpoint(1, 0, None, {"composite_score": 0.9})
    assert (ckdir / "best.pt").read_bytes() == b"precious"
    for step in (2, 3):
        save(ckdir, step)
        tracker.update_checkpoint(step, 0, None, {"composite_score": 1.0 + step})
    assert not os.path.lexists(ckdir / "0000001.pt")
    assert (outside / "real.pt").read_bytes() == b"precious"
    assert os.listdir(outside) == ["real.pt"]


def test_unknown_entries_are_reported_not_deleted(tmp_path: Path, caplog):
    populated(tmp_path)
    save(tmp_path, 9, tag=True)  # e.g. saved by a run that crashed before telling the tracker
    (tmp_path / "latest.pt").mkdir()
    (tmp_path / "e0001.pt").mkdir()
    caplog.set_level(logging.WARNING, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, keep_every_n_steps=None, reconfigure=True)
    assert any("not in the state and will not be touched: 0000009.pt" in m for m in caplog.messages)
    save(tmp_path, 10)
    tracker.update_checkpoint(10, 0, None, {"composite_score": 0.0})
    assert {"0000009.pt", "latest.pt", "e0001.pt"} <= set(os.listdir(tmp_path))


def test_leftover_temporaries_are_cleaned_on_start(tmp_path: Path):
    populated(tmp_path)
    (tmp_path / ".bestckpt-tmp.best_checkpoints.json.99.dead").write_text('{"half')
    half = tmp_path / ".bestckpt-deleting.0000001.pt.dead"
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"m")
    BestCheckpointTracker(tmp_path, save_top_k=2)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".bestckpt-")]


def test_best_pt_that_is_a_real_file_is_never_overwritten(tmp_path: Path):
    (tmp_path / "best.pt").write_bytes(b"the user's own best.pt")
    with pytest.raises(FileExistsError, match="not a symlink.*Move it away"):
        BestCheckpointTracker(tmp_path)
    assert (tmp_path / "best.pt").read_bytes() == b"the user's own best.pt"


def test_checkpoint_dir_that_is_a_file(tmp_path: Path):
    (tmp_path / "ck").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        BestCheckpointTracker(tmp_path / "ck")
    with pytest.raises(OSError, match="cannot create checkpoint_dir"):
        BestCheckpointTracker(tmp_path / "ck" / "sub")
    assert (tmp_path / "ck").read_text() == "not a directory"


def _make_unwritable(path: Path) -> bool:
    """Make ``path`` unwritable even for root: the immutable attribute (``chattr +i``) when root,
    permission bits otherwise. False when neither is possible here."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o755)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions only")
def test_read_only_directory(tmp_path: Path):
    """A directory the process cannot write: a clear error for a writer, readers still work, nothing changed."""
    ckdir = tmp_path / "ck"
    populated(ckdir)
    before = {n: (ckdir / n).stat().st_mtime_ns for n in os.listdir(ckdir)}
    if not _make_unwritable(ckdir):
        pytest.skip("running as root without chattr/CAP_LINUX_IMMUTABLE: cannot make a directory unwritable")
    try:
        with pytest.raises(PermissionError, match="not usable for writing.*is_writer=False"):
            BestCheckpointTracker(ckdir, save_top_k=1, reconfigure=True)
        reader = BestCheckpointTracker(ckdir, save_top_k=1, is_writer=False, reconfigure=True)
        assert reader.best.step == 2 and [r.step for r in reader.records] == [1, 2, 3, 4]
    finally:
        _make_writable(ckdir)
    after = {n: (ckdir / n).stat().st_mtime_ns for n in os.listdir(ckdir)}
    assert after == before


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions only")
def test_directory_becoming_read_only_mid_run(tmp_path: Path):
    tracker = populated(tmp_path)
    save(tmp_path, 5)
    state_before = (tmp_path / "best_checkpoints.json").read_bytes()
    if not _make_unwritable(tmp_path):
        pytest.skip("running as root without chattr/CAP_LINUX_IMMUTABLE: cannot make a directory unwritable")
    try:
        with pytest.raises(PermissionError, match="could not update the bookkeeping.*consistent"):
            tracker.update_checkpoint(5, 0, None, {"composite_score": 5.0})
    finally:
        _make_writable(tmp_path)
    assert (tmp_path / "best_checkpoints.json").read_bytes() == state_before
    assert tracker.best.step == 2  # the failed call changed nothing, in memory either
    assert tracker.update_checkpoint(5, 0, None, {"composite_score": 5.0}) is True
    assert os.readlink(tmp_path / "best.pt") == "0000005.pt"
