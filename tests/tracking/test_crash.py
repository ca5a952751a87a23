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


def test_a_save_adopted_at_start_counts_as_a_save_that_followed(tmp_path: Path):
    """The sequence of the soak's one kind of resume-point report, without timing: 310 registered and
    reported; 320 written, the kill before its registration (no ``saving`` report); the next start
    adopts 320 as the newest save (pending); a restarted run saves 70. Keep-latest (2) keeps 70 and
    320, so 310 is rightly deleted: two saves followed it. The checker counts a save from its
    ``writing`` report; counting registrations only, it blamed the tracker for this directory."""
    soak = _load_soak()
    from bestckpt.tracking.tracker import BestCheckpointTracker

    ck = tmp_path / "ck"
    lines: list[str] = []
    tracker = BestCheckpointTracker(ck, **soak.SETTINGS)
    for step, score in [(10, 0.9), (20, 0.8), (30, 0.7), (310, 0.1)]:  # 310: not top-3, not every-200
        lines.append(f"writing {step}")
        (ck / f"{step:07d}.pt").write_bytes(b"x")
        lines.append(f"saving {step}")
        tracker.checkpoint_saved(step, ck / f"{step:07d}.pt")
        tracker.update_checkpoint(step, 0, None, {"composite_score": score})
        lines += [f"saved {step}", f"scored {step} {score}"]
    del tracker
    lines.append("writing 320")
    (ck / "0000320.pt").write_bytes(b"x")  # committed; the kill came before the registration
    tracker = BestCheckpointTracker(ck, **soak.SETTINGS)  # the next start adopts it: the newest save
    assert {r.step: (r.status, r.info.get("adopted")) for r in tracker.records}[320] == ("pending", True)
    lines.append("writing 70")  # a restarted run resumed from an older checkpoint
    (ck / "0000070.pt").write_bytes(b"x")
    lines.append("saving 70")
    tracker.checkpoint_saved(70, ck / "0000070.pt", evaluate=False)  # the kill before "saved 70"
    assert not (ck / "0000310.pt").exists() and (ck / "0000320.pt").exists() and (ck / "0000070.pt").exists()
    reported = soak.Reported()
    for line in lines:
        reported.apply(line)
    assert soak.check_after_kill(ck) == [] and soak.check_promises(ck, reported, ("resume",)) == []
    old = soak.Reported()  # registrations only: 70 alone seems to follow 310
    for line in lines:
        if not line.startswith("writing"):
            old.apply(line)
    assert any("resume point 0000310.pt" in p for p in soak.check_promises(ck, old, ("resume",)))
    one = soak.Reported()  # not vacuous: with one save after 310 (no 320), its deletion is reported
    for line in [x for x in lines if not x.endswith(" 320")]:
        one.apply(line)
    assert any("resume point 0000310.pt" in p for p in soak.check_promises(ck, one, ("resume",)))
