"""Hostile inputs, class R7: a pending checkpoint whose evaluation never comes.

Pending checkpoints are never un-protected automatically. After ``pending_stale_after`` seconds
(default one day) ``bestckpt status`` marks them stale, with their age; the user releases them
explicitly (``tracker.release(step)`` / ``bestckpt release DIR STEP...``), which makes them prunable
like any unevaluated checkpoint. Each test asserts that nothing needed is deleted, that nothing
outside the directory changes, and that errors are clear.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from hostile_dir import on_disk, snapshot  # noqa: F401

from bestckpt.errors import BestckptError, ConfigError
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.layout import STATE_FILE
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.timeout(120)

M = "composite_score"
DAY = 86400.0


# ---------------------------------------------------------------------------------------------- helpers
def save(ckdir: Path, step: int) -> Path:
    path = ckdir / f"{step:07d}.pt"
    path.write_bytes(f"step {step}".encode())
    return path


def tracker(ckdir: Path, **kw) -> BestCheckpointTracker:
    kw.setdefault("save_top_k", 1)
    kw.setdefault("keep_every_n_steps", None)
    if "pending_stale_after" in kw:  # a setting of the config object only
        stale = kw.pop("pending_stale_after")
        return BestCheckpointTracker(config=TrackerConfig(ckdir, metric_name=M, pending_stale_after=stale, **kw))
    return BestCheckpointTracker(ckdir, metric_name=M, **kw)


def run_with_forgotten_pending(ckdir: Path, **kw) -> BestCheckpointTracker:
    """10 pending (its evaluator died), 20 scored, 30..60 saved only."""
    t = tracker(ckdir, **kw)
    save(ckdir, 10)
    t.checkpoint_saved(10, None, evaluate=True)
    save(ckdir, 20)
    t.update_checkpoint(20, None, None, {M: 0.5})
    for step in (30, 40, 50, 60):
        save(ckdir, step)
        t.checkpoint_saved(step, None, evaluate=False)
    return t


def age_record(ckdir: Path, step: int, seconds: float) -> None:
    """Make step ``step``'s registration ``seconds`` old (as if the run had gone on that long)."""
    path = ckdir / STATE_FILE
    state = json.loads(path.read_text())
    for rec in state["checkpoints"]:
        if rec["step"] == step:
            rec["timestamp"] = time.time() - seconds
    path.write_text(json.dumps(state))


def cli(*argv: str) -> int:
    from bestckpt.cli import main

    return main(["--log-level", "WARNING", *argv])


def status_json(ckdir: Path, capsys) -> dict[int, dict]:
    capsys.readouterr()
    assert cli("status", str(ckdir), "--json") == 0
    return {r["step"]: r for r in json.loads(capsys.readouterr().out)["records"]}


def state_bytes(ckdir: Path) -> bytes:
    return (ckdir / STATE_FILE).read_bytes()


# ---------------------------------------------------------------------------------------------- tests
def test_stale_pending_is_marked_in_status_and_never_deleted(world: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    t = run_with_forgotten_pending(world)
    age_record(world, 10, 3.2 * DAY)
    for step in (70, 80):
        save(world, step)
        t.checkpoint_saved(step, None, evaluate=False)
    t.prune()
    assert 10 in on_disk(world) and t.pending_steps() == [10]
    capsys.readouterr()
    assert cli("status", str(world)) == 0
    out = capsys.readouterr().out
    assert "pending (stale, 3.2 d)" in out
    rows = status_json(world, capsys)
    assert rows[10]["stale"] is True and 3.19 * DAY < rows[10]["pending_age_s"] < 3.21 * DAY
    assert rows[10]["fate"] == "keep" and "pending evaluation" in rows[10]["reasons"]
    assert on_disk(world) == {10, 20, 80}


def test_fresh_pending_is_not_stale_and_status_json_carries_every_pending_age(world: Path, capsys):
    run_with_forgotten_pending(world)
    rows = status_json(world, capsys)
    assert rows[10]["stale"] is False and 0 <= rows[10]["pending_age_s"] < DAY
    assert rows[20]["pending_age_s"] is None and rows[20]["stale"] is False  # evaluated: no pending age


def test_stale_after_is_the_users_setting(world: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    run_with_forgotten_pending(world, pending_stale_after=3600)
    age_record(world, 10, 2 * 3600)
    capsys.readouterr()
    assert cli("status", str(world)) == 0
    assert "pending (stale, 2.0 h)" in capsys.readouterr().out
    assert 10 in on_disk(world)


def test_stale_after_none_never_marks_stale(world: Path, capsys):
    run_with_forgotten_pending(world, pending_stale_after=None)
    age_record(world, 10, 400 * DAY)
    rows = status_json(world, capsys)
    assert rows[10]["stale"] is False and rows[10]["pending_age_s"] > 399 * DAY
    assert 10 in on_disk(world)


def test_writer_start_warns_about_stale_pending(world: Path, caplog):
    run_with_forgotten_pending(world)
    age_record(world, 10, 2 * DAY)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = tracker(world)
    msgs = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(msgs) == 1 and "10" in msgs[0] and "bestckpt release" in msgs[0]
    assert t.pending_steps() == [10] and 10 in on_disk(world)  # a warning, never a deletion


def test_release_makes_pending_prunable_and_logs(world: Path, caplog):
    t = run_with_forgotten_pending(world)
    caplog.set_level(logging.INFO, logger="bestckpt")
    t.release(10)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("released step 10" in m and "prunable" in m for m in msgs), msgs
    rec = {r.step: r for r in t.records}[10]
    assert rec.status == "saved" and rec.pruned  # deleted by the same call: not best, not latest
    assert on_disk(world) == {20, 60}  # the best and the resume point untouched


def test_release_of_a_non_pending_step_is_a_clear_error_and_changes_nothing(world: Path):
    t = run_with_forgotten_pending(world)
    before, files = state_bytes(world), on_disk(world)
    with pytest.raises(ConfigError, match=r"step 20 is evaluated, not pending.*bestckpt status"):
        t.release(20)
    with pytest.raises(ConfigError, match=r"step 999.*not tracked"):
        t.release(999)
    with pytest.raises(ConfigError, match=r"step 30.*(pruned|deleted)"):
        t.release(30)
    with pytest.raises(ConfigError, match=r"step 20 is evaluated"):
        t.release(10, 20)  # all or nothing: 10 stays pending
    with pytest.raises(ConfigError, match=r"at least one step"):
        t.release()
    with pytest.raises((ConfigError, TypeError), match=r"step must be an int, got '10'"):
        t.release("10")
    assert state_bytes(world) == before and on_disk(world) == files and t.pending_steps() == [10]


def test_release_needs_the_writer(world: Path):
    run_with_forgotten_pending(world)
    reader = BestCheckpointTracker(world, metric_name=M, is_writer=False)
    before = state_bytes(world)
    with pytest.raises(BestckptError, match=r"is_writer"):
        reader.release(10)
    assert state_bytes(world) == before and 10 in on_disk(world)


def test_cli_release(world: Path, capsys):
    t = run_with_forgotten_pending(world)
    save(world, 70)
    t.checkpoint_saved(70, None, evaluate=True)
    save(world, 80)
    t.checkpoint_saved(80, None, evaluate=True)
    capsys.readouterr()
    assert cli("release", str(world), "10", "70") == 0
    out = capsys.readouterr().out
    assert "released step 10" in out and "released step 70" in out
    assert on_disk(world) == {20, 80} and t.pending_steps() == [80]


def test_cli_release_errors_are_one_line_and_release_nothing(world: Path, capsys):
    run_with_forgotten_pending(world)
    before = state_bytes(world)
    capsys.readouterr()
    assert cli("release", str(world), "10", "20") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bestckpt: error: ") and "step 20 is evaluated, not pending" in err
    assert "\n" not in err and "Traceback" not in err
    assert cli("release", str(world.parent.parent / "nowhere"), "10") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bestckpt: error: ") and "nowhere" in err and "\n" not in err
    empty = world.parent.parent / "empty"
    empty.mkdir()
    assert cli("release", str(empty), "10") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bestckpt: error: ") and "best_checkpoints.json" in err and "\n" not in err
    assert os.listdir(empty) == []  # nothing created there
    assert state_bytes(world) == before and 10 in on_disk(world)


@pytest.mark.parametrize("bad", [0, -5, "1d", True, float("nan"), float("inf")])
def test_pending_stale_after_validation(tmp_path: Path, bad):
    with pytest.raises(ConfigError, match=r"pending_stale_after.*got"):
        TrackerConfig(tmp_path, pending_stale_after=bad)
