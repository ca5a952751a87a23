"""``bestckpt finalize DIR --abandon``: an interrupted finalize that will not be rerun stops pinning its finalists.

Retention then runs at once (never deleting the best, the newest, pinned or pending checkpoints); the scores the
finalize measured and an earlier finalize's choice stay. A running finalize holds the directory's finalize lock:
``--abandon`` (and a second finalize) refuse until it ends, however it ends (here: killed). Uses the small
pipeline kit (TinySampler + KitScorer), so the file takes seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import TESTS_DIR, InterruptedEvaluator, KitScorer, TinySampler, make_protocol, save_checkpoint
from waiting import Beacon, Gate

from bestckpt.cli import main
from bestckpt.errors import StateLockTimeout
from bestckpt.evaluation.protocol import Protocol
from bestckpt.runners.finalize import finalize
from bestckpt.tracking.finalized import final_of
from bestckpt.tracking.layout import STATE_FILE
from bestckpt.tracking.tracker import BestCheckpointTracker


def _evaluator(protocol: Protocol, stop_at: int | None = None) -> InterruptedEvaluator:
    return InterruptedEvaluator(protocol, TinySampler(), scorer=KitScorer(), device="cpu", dist=None, stop_at=stop_at)


def _scored_run(ckpt: Path, scores: dict[int, float], **settings: Any) -> BestCheckpointTracker:
    ckpt.mkdir(parents=True, exist_ok=True)
    tracker = BestCheckpointTracker(ckpt, is_writer=True, **settings)
    _add(tracker, scores)
    return tracker


def _add(tracker: BestCheckpointTracker, scores: dict[int, float]) -> None:
    for step, score in scores.items():
        save_checkpoint(tracker.dir / f"{step:07d}.pt", step)
        tracker.update_checkpoint(step, None, f"{step:07d}.pt", {"composite_score": score}, protocol_hash="train")


def _finalizing(ckpt: Path) -> list[int]:
    return [r.step for r in BestCheckpointTracker.open(ckpt).records if not r.pruned and "finalizing" in final_of(r)]


def test_abandon_releases_the_pins_keeps_scores_and_choice_and_retention_runs(
        tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "checkpoints"
    tracker = _scored_run(ckpt, {10: 0.1, 20: 0.5, 30: 0.4, 40: 0.2}, save_top_k=2, keep_latest=1, pinned_steps=(10,))
    first, second = make_protocol(tmp_path, num_samples=8), make_protocol(tmp_path, num_samples=12)
    chosen = finalize(tracker, _evaluator(first)).chosen  # a completed finalize: its choice must survive
    assert chosen in (20, 30)
    chosen_at = final_of({r.step: r for r in tracker.records}[chosen])["chosen"]

    with pytest.raises(KeyboardInterrupt):  # a second finalize, all four finalists, interrupted at the second one
        finalize(tracker, _evaluator(second, stop_at=2), top_k=-1)
    assert _finalizing(ckpt) == [10, 20, 30, 40]
    _add(tracker, {50: 0.9, 60: 0.8})  # training goes on: 20, 30, 40 leave the top-2 / the newest
    save_checkpoint(ckpt / "0000070.pt", 70)
    tracker.checkpoint_saved(70, "0000070.pt")  # pending, and the newest
    held = {d.step: d.reasons for d in tracker.plan() if d.step in (20, 30, 40) and d.step != chosen}
    assert held and all(any("--abandon" in why for why in reasons) for reasons in held.values())  # the status hint
    state_before = (ckpt / STATE_FILE).read_bytes()

    assert main(["finalize", str(ckpt), "--abandon", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would release step 40" in out and "would be deleted by retention" in out, out
    assert (ckpt / STATE_FILE).read_bytes() == state_before and _finalizing(ckpt) == [10, 20, 30, 40]

    assert main(["finalize", str(ckpt), "--abandon", "--sampler", "ignored:factory"]) == 0  # e.g. the same command
    out = capsys.readouterr().out
    gone = sorted(held)
    for step in gone:
        assert f"released step {step} " in out and not (ckpt / f"{step:07d}.pt").exists(), out
    assert f"released step {chosen} " in out and "released step 10 " in out
    assert f"{len(gone)} checkpoint(s) deleted" in out and f"best.pt: step {chosen}" in out, out

    reread = BestCheckpointTracker.open(ckpt, is_writer=True)
    records = {r.step: r for r in reread.records}
    live = sorted(s for s, r in records.items() if not r.pruned)
    assert live == sorted({10, chosen, 50, 60, 70}) and all((ckpt / records[s].path).exists() for s in live)
    assert not _finalizing(ckpt)
    assert second.hash in final_of(records[10])["scores"]  # measured before the interruption: kept
    for step in (20, 30):  # the first finalize's scores stay too (pruned records keep their history)
        assert first.hash in final_of(records[step])["scores"]
    assert final_of(records[chosen])["chosen"] == chosen_at and reread.best.step == chosen  # type: ignore[union-attr]
    assert str((ckpt / "best.pt").readlink()) == f"{chosen:07d}.pt"
    assert json.loads((ckpt / STATE_FILE).read_text())["best_step"] == chosen
    assert records[70].status == "pending" and all(d.keep for d in reread.plan())

    state_after = (ckpt / STATE_FILE).read_bytes()
    assert main(["finalize", str(ckpt), "--abandon"]) == 0  # nothing left to abandon
    assert "no finalize marks" in capsys.readouterr().out
    assert (ckpt / STATE_FILE).read_bytes() == state_after


def test_abandon_refuses_while_a_finalize_runs_and_releases_after_it_was_killed(tmp_path: Path,
                                                                              one_thread: None) -> None:
    ckpt = tmp_path / "checkpoints"
    tracker = _scored_run(ckpt, {10: 0.1, 20: 0.5, 30: 0.4}, save_top_k=2, keep_latest=1)  # 10 is deleted
    protocol = make_protocol(tmp_path, num_samples=8)
    protocol.to_file(tmp_path / "final.json")
    beacon, gate = Beacon(tmp_path / "beacon"), Gate(tmp_path / "gate")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               PIPELINE_KIT_BEACON=str(beacon.path), PIPELINE_KIT_GATE=str(gate.path), PIPELINE_KIT_HOLD="*",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bestckpt", "finalize", str(ckpt), "--protocol", str(tmp_path / "final.json"),
           "--final-protocol", str(tmp_path / "final.json"), "--sampler", "pipeline_kit:make_sampler",
           "--scorer", "pipeline_kit:make_kit_scorer", "--device", "cpu", "--samples-dir", str(tmp_path / "s"),
           "--top-k", "-1"]
    log = open(tmp_path / "finalize.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        beacon.wait_line()  # the finalize is sampling its first finalist: its pins are set and it holds the lock
        assert _finalizing(ckpt) == [20, 30]
        _add(tracker, {40: 0.9, 50: 0.8})  # training goes on meanwhile: 20 and 30 are held by their pins only
        for extra in ([], ["--dry-run"]):
            assert main(["finalize", str(ckpt), "--abandon", *extra]) == 2
        with pytest.raises(StateLockTimeout, match="running"):
            tracker.abandon_finalize()
        with pytest.raises(StateLockTimeout, match="before starting another"):  # nor does a second finalize start
            finalize(tracker, _evaluator(protocol))
        assert _finalizing(ckpt) == [20, 30] and all((ckpt / f"{s:07d}.pt").exists() for s in (20, 30))
        proc.send_signal(signal.SIGKILL)  # it dies holding the lock: the kernel releases it
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        gate.open()
        beacon.close()
        log.close()
    assert tracker.abandon_finalize() == [20, 30]
    assert not _finalizing(ckpt)
    assert sorted(r.step for r in tracker.records if not r.pruned) == [40, 50]  # the best (top-2), the newest
    assert not (ckpt / "0000020.pt").exists() and not (ckpt / "0000030.pt").exists()


def test_abandon_without_marks_or_state_and_misused_options(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["finalize", str(empty), "--abandon"]) == 2
    assert STATE_FILE in capsys.readouterr().err
    ckpt = tmp_path / "checkpoints"
    _scored_run(ckpt, {10: 0.1}).set_final({10: {"scores": {"x": {"metrics": {"composite_score": 0.2}}}}})
    state = (ckpt / STATE_FILE).read_bytes()
    for extra in ([], ["--dry-run"]):
        assert main(["finalize", str(ckpt), "--abandon", *extra]) == 0
        assert "no finalize marks" in capsys.readouterr().out
    assert (ckpt / STATE_FILE).read_bytes() == state
    assert main(["finalize", str(ckpt), "--dry-run", "--protocol", "p.json", "--sampler", "m:f"]) == 2
    assert "--abandon" in capsys.readouterr().err
    assert main(["finalize", str(ckpt)]) == 2  # --protocol and --sampler are needed without --abandon
    assert "--protocol" in capsys.readouterr().err
