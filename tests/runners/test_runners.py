"""Runners: schedule, inline evaluation (determinism, records, files, log line), background worker
with a real training loop (never waits for an evaluation: shown by holding the worker, not by timing)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from pipeline_kit import (
    KitScorer,
    TinySampler,
    make_protocol,
    real_protocol,
    save_checkpoint,
)
from waiting import Beacon, Gate

from bestckpt.evaluation.evaluate import evaluate_checkpoint
from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning
from bestckpt.runners import BackgroundRunner, EvalSchedule, Evaluator, InlineRunner
from bestckpt.tracking.tracker import BestCheckpointTracker


def test_schedule_default_is_every_second_checkpoint() -> None:
    s = EvalSchedule()
    assert [s.should_evaluate(step, i) for i, step in enumerate((100, 200, 300, 400), 1)] == [False, True, False, True]
    guide = EvalSchedule(checkpoint_every_steps=100)  # the guide's stateless rule: step % (ckpt_every * 2)
    assert [guide.should_evaluate(s) for s in (100, 200, 300, 400)] == [False, True, False, True]
    assert not EvalSchedule.off().should_evaluate(200, 2)
    assert all(EvalSchedule(every_n_checkpoints=1).should_evaluate(s, i) for i, s in enumerate((1, 2, 3), 1))
    with pytest.raises(ValueError, match=r"every_n_checkpoints must be an integer >= 1 .*got 0"):
        EvalSchedule(every_n_checkpoints=0)


def test_same_checkpoint_twice_gives_identical_scores(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    ckpt = save_checkpoint(tmp_path / "0000100.pt", 100)
    scorer = KitScorer()
    ref = scorer.reference_statistics(torch.zeros(4, 3, 16, 16, dtype=torch.uint8) + 40)
    a = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, dist=None, batch_size=3)
    b = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, dist=None, batch_size=8)
    assert a.ok and b.ok, (a.error, b.error)
    assert a.scores == b.scores  # bit-identical, whatever the batch size
    assert a.weights == "ema" and a.protocol_hash == protocol.hash
    other = evaluate_checkpoint(save_checkpoint(tmp_path / "0000200.pt", 200), 200, protocol, TinySampler(), scorer,
                                ref, dist=None)
    assert other.scores != a.scores


def test_inline_runner_records_scores_files_and_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=2)
    evaluator = Evaluator(protocol, TinySampler(), scorer=KitScorer(),
                          samples_dir=tmp_path / "run" / "evaluation_samples", tensorboard_dir=tmp_path / "run" / "tb",
                          dist=None)
    runner = InlineRunner(tracker, evaluator)
    caplog.set_level(logging.INFO)
    results = []
    for step in (100, 200, 300, 400):
        path = save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)
        results.append(runner.checkpoint_saved(step, path, epoch=step // 100))
    runner.close()
    assert results[0] is None and results[2] is None  # every 2nd checkpoint
    assert results[1].ok and results[3].ok
    assert "[Step 200] Evaluating model performance at step 200" in caplog.text
    recs = {r.step: r for r in tracker.records}
    assert recs[200].status == "evaluated" and recs[200].protocol_hash == protocol.hash
    assert recs[200].metrics["composite_score"] == pytest.approx(results[1].scores["composite_score"])
    assert recs[200].info["weights"] == "ema"
    assert recs[100].status == "saved"
    best = tracker.best
    assert best is not None and best.step in (200, 400)
    samples = tmp_path / "run" / "evaluation_samples"
    assert (samples / "0000200" / "eval_generated_003.jpg").is_file()
    assert (samples / "0000200" / "eval_comparison_000.jpg").is_file()
    assert (samples / "0000400" / "eval_prompt_000.txt").read_text().strip() == "a red square"
    assert (samples / "progress_grid.jpg").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def _train(runner, ckpt_dir: Path, n_checkpoints: int, steps_per_ckpt: int = 20,
           status_after: list | None = None) -> None:
    """A real (tiny) training loop: an MLP regressing a fixed target, checkpoint every few steps.

    If ``status_after`` is given, appends each checkpoint's tracker status right after
    ``runner.checkpoint_saved`` returned.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(192, 64), torch.nn.Tanh(), torch.nn.Linear(64, 192))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 192)
    step = 0
    for _ in range(n_checkpoints):
        for _ in range(steps_per_ckpt):
            loss = (model(x) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        w = model[2].weight.detach()[:192, :1].reshape(3, 8, 8)
        path = ckpt_dir / f"{step:07d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"module": {"w": w.clone()}, "ema": {"w": w.clone() * 0.9}, "steps": step}, tmp)
        tmp.replace(path)
        runner.checkpoint_saved(step, path, epoch=0)
        if status_after is not None:
            status_after.append({r.step: r.status for r in runner.tracker.records}.get(step))


def test_background_runner_does_not_block_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's sampler is held at a gate the test opens only after the loop: every call must return
    while its checkpoint is still pending. A runner that waited for its evaluation would see the sampler's
    bounded wait expire and record a failure instead (how much time it saves is bench/bench_background.py's)."""
    gate = Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=2, keep_every_n_steps=0)
    runner = BackgroundRunner(tracker, protocol, "pipeline_kit:make_sampler",
                              scorer_spec="pipeline_kit:make_kit_scorer",
                              schedule=EvalSchedule(every_n_checkpoints=1), samples_dir=tmp_path / "samples",
                              batch_size=4, log_file=tmp_path / "worker.log")
    status_after: list = []
    try:
        _train(runner, ckpt_dir, n_checkpoints=4, status_after=status_after)
    finally:
        gate.open()
    runner.close(wait=True, timeout=300)
    assert status_after == ["pending"] * 4, status_after
    recs = {r.step: r for r in tracker.records}
    assert sorted(recs) == [20, 40, 60, 80]
    assert all(r.status == "evaluated" for r in recs.values()), {s: (r.status, r.error) for s, r in recs.items()}
    assert tracker.pending_steps() == []
    worker_log = (tmp_path / "worker.log").read_text()
    assert "[Step 20] Evaluating model performance at step 20" in worker_log  # the guide's line, from the worker
    assert "New best checkpoint" in worker_log


def test_inline_with_the_real_scorer_and_random_backbones(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    protocol = real_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True)
    evaluator = Evaluator(protocol, TinySampler(), cache_dir=tmp_path / "cache", dist=None, batch_size=4)
    runner = InlineRunner(tracker, evaluator, EvalSchedule(every_n_checkpoints=1))
    path = save_checkpoint(ckpt_dir / "0000100.pt", 100)
    first = runner.checkpoint_saved(100, path)
    assert first.ok, first.error
    for name in ("clip_score", "lpips", "inception_score", "fid", "kid"):
        assert isinstance(first.scores[name], float), (name, first.scores, first.failures)
    assert first.scores["composite_score"] is not None
    again = evaluator.evaluate(100, path)  # same checkpoint, same protocol -> identical scores
    assert again.scores == first.scores
    assert list((tmp_path / "cache").glob("refstats-*.npz"))  # reference statistics cached on disk
    rec = tracker.records[0]
    assert rec.status == "evaluated" and rec.metrics["fid"] == pytest.approx(first.scores["fid"])


def test_changed_protocol_on_resume_refuses_or_rescores(tmp_path: Path) -> None:
    from bestckpt.runners import ProtocolChangedError

    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    every = EvalSchedule(every_n_checkpoints=1)
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, keep_every_n_steps=0)
    InlineRunner(tracker, Evaluator(protocol, TinySampler(), scorer=KitScorer(), dist=None), every).checkpoint_saved(
        100, save_checkpoint(ckpt_dir / "0000100.pt", 100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        changed = Protocol(prompts=protocol.prompts, reference_images=protocol.reference_images,
                           reference_dir=protocol.reference_dir, num_samples=protocol.num_samples, seed=6,
                           sampler=protocol.sampler, metrics=protocol.metrics)
    evaluator = Evaluator(changed, TinySampler(), scorer=KitScorer(), dist=None)
    with pytest.raises(ProtocolChangedError, match=r"steps \[100\].*rescore"):
        InlineRunner(tracker, evaluator, every)
    runner = InlineRunner(tracker, evaluator, every, on_protocol_change="rescore")
    assert tracker.pending_steps() == [100]  # protected until re-scored
    runner.checkpoint_saved(200, save_checkpoint(ckpt_dir / "0000200.pt", 200))
    assert {r.step: r.protocol_hash for r in tracker.records} == {100: changed.hash, 200: changed.hash}
    assert tracker.pending_steps() == []


def test_background_worker_killed_mid_evaluation_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    beacon, gate = Beacon(tmp_path / "sampling"), Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_BEACON", str(beacon.path))  # the sampler says when it starts
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))  # ... and waits there on step 100
    monkeypatch.setenv("PIPELINE_KIT_HOLD", "0000100.pt")
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=1, keep_every_n_steps=0)
    runner = BackgroundRunner(tracker, protocol, "pipeline_kit:make_sampler",
                              scorer_spec="pipeline_kit:make_kit_scorer",
                              schedule=EvalSchedule(every_n_checkpoints=1), batch_size=8)
    try:
        runner.checkpoint_saved(100, save_checkpoint(ckpt_dir / "0000100.pt", 100))
        first_pid = runner._proc.pid
        assert beacon.wait_line() == f"{first_pid} 0000100.pt"  # the worker is sampling step 100
        os.kill(first_pid, signal.SIGKILL)  # the worker dies in the middle of evaluating step 100
        runner._proc.join(300)
        assert runner._proc.exitcode == -signal.SIGKILL
        assert tracker.pending_steps() == [100]  # still protected
    finally:
        gate.open()
    assert runner.resume_pending() == [100]  # e.g. after a restart of training; restarts the worker
    runner.checkpoint_saved(200, save_checkpoint(ckpt_dir / "0000200.pt", 200))
    runner.close(wait=True, timeout=300)
    beacon.close()
    assert runner._proc.pid != first_pid
    assert {r.step: r.status for r in tracker.records} == {100: "evaluated", 200: "evaluated"}
    done = [c["step"] for c in runner.completed if not c.get("skipped")]
    assert sorted(done) == [100, 200]  # each recorded exactly once
