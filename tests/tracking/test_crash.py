"""Crash injection: a child doing checkpoint saves + tracker updates is SIGKILLed at random instants.

The child, the invariants and the soak loop live in ``scripts/crash_soak.py`` (which runs 1,000+
kills outside CI); here we run 55 kills and require zero violations.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_soak.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("crash_soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_sigkill_at_random_instants_never_breaks_the_invariants(tmp_path: Path):
    """60 kills: 35 with full snapshots (every ordinary run), 25 on the journal path (large states)."""
    soak = _load_soak()
    from bestckpt.tracking.journal import read_state

    total = 0
    for name, kills, compact in (("snapshot", 35, 256 * 1024), ("journal", 25, 0)):
        ck = tmp_path / name
        done, n_violations, messages = soak.run_soak(ck, kills=kills, seed=1234, max_delay=0.12, compact_bytes=compact)
        total += done
        assert n_violations == 0, f"{name}:\n" + "\n".join(messages[:20])
        statuses = {r["status"] for r in read_state(ck)["checkpoints"]}
        assert "evaluated" in statuses  # the children got far enough to record scores
    assert total >= 50


def test_the_invariant_checker_catches_a_broken_directory(tmp_path: Path):
    """The checker is not vacuous: a deleted top-k checkpoint and a wrong best.pt are reported."""
    soak = _load_soak()
    from bestckpt.tracking.tracker import BestCheckpointTracker

    ck = tmp_path / "ck"
    tracker = BestCheckpointTracker(ck, save_top_k=3)
    for step, score in [(10, 0.5), (20, 0.9), (30, 0.7)]:
        (ck / f"{step:07d}.pt").write_bytes(b"x")
        tracker.update_checkpoint(step, 0, None, {"composite_score": score})
    assert soak.check_after_kill(ck) == []
    os.unlink(ck / "0000030.pt")
    os.unlink(ck / "best.pt")
    os.symlink("0000010.pt", ck / "best.pt")
    problems = soak.check_after_kill(ck)
    assert any("0000030.pt is missing" in p for p in problems)
    assert any("best.pt -> 0000010.pt, expected 0000020.pt" in p for p in problems)
