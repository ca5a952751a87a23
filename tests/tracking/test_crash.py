"""Crash injection: a child doing checkpoint saves, scores, failing re-scores and restarts is SIGKILLed
at random instants (a random delay after a random number of its completed calls).

The child, the invariants and the soak loop live in ``scripts/crash_soak.py`` (which runs 1,000+
kills outside CI); here we run 60 kills per test and require zero violations.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_soak.py"


def _load_soak():
    if "crash_soak" in sys.modules:
        return sys.modules["crash_soak"]
    spec = importlib.util.spec_from_file_location("crash_soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_soak"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _soak(tmp_path: Path, promises: tuple[str, ...]) -> None:
    """35 kills with full snapshots (every ordinary run), 25 on the journal path (large states)."""
    soak = _load_soak()
    total = 0
    for name, kills, compact in (("snapshot", 35, 256 * 1024), ("journal", 25, 0)):
        result = soak.run_soak(tmp_path / name, kills=kills, seed=1234, compact_bytes=compact, promises=promises)
        total += result.kills
        assert result.violations == [], f"{name}:\n" + "\n".join(result.violations[:20])
        # the children got far enough: saved, scored, re-scored (some failing), restarted
        assert {"saved", "scored", "failed"} <= set(result.events), result.events
    assert total >= 50


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_sigkill_at_random_instants_never_breaks_the_invariants(tmp_path: Path):
    """The state parses, best.pt is on the best, the newest and the top-k exist, no deletion is lost,
    and a new tracker resumes cleanly, with restarts and failing re-scores in the mix."""
    _soak(tmp_path, promises=())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_sigkill_at_random_instants_keeps_the_promises(tmp_path: Path):
    """... and the resume point of a restarted run is never deleted (R1), and a failed re-evaluation
    never costs a valid score (R4)."""
    soak = _load_soak()
    _soak(tmp_path, promises=soak.PROMISES)


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


def test_the_promise_checker_catches_a_lost_resume_point_and_a_lost_score(tmp_path: Path):
    """Not vacuous either: the last reported registration missing, a reported valid score now failed."""
    soak = _load_soak()
    from bestckpt.tracking.tracker import BestCheckpointTracker

    ck = tmp_path / "ck"
    tracker = BestCheckpointTracker(ck, save_top_k=3)
    reported = soak.Reported()
    for step, score in [(10, 0.5), (20, 0.9)]:
        (ck / f"{step:07d}.pt").write_bytes(b"x")
        tracker.update_checkpoint(step, 0, None, {"composite_score": score})
        for line in (f"saving {step}", f"saved {step}", f"scored {step} {score}"):
            reported.apply(line)
    assert soak.check_promises(ck, reported, soak.PROMISES) == []
    (ck / "0000005.pt").write_bytes(b"x")
    tracker.record_failure(5, "simulated")
    reported.apply("scored 5 0.4")  # as if a valid score of step 5 had been reported: now it is failed
    os.unlink(ck / "0000020.pt")
    problems = soak.check_promises(ck, reported, soak.PROMISES)
    assert any("resume point 0000020.pt" in p for p in problems)
    assert any("step 5 had a valid score and is now failed" in p for p in problems)
    reported.apply("saving 30")
    reported.apply("saving 40")  # two registrations may have followed, unreported: no resume promise left
    assert not any("resume point" in p for p in soak.check_promises(ck, reported, ("resume",)))
