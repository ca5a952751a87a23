"""TrainingEvaluation, the plain-loop helper: modes, the result callback, resuming pending checkpoints, log lines.

No test depends on timing: results are awaited with ``poll(timeout=...)`` / ``close(wait=True)``, which
return as soon as the worker answered (the timeouts only bound a hung worker)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pipeline_kit import KitScorer, TinySampler, make_protocol, save_checkpoint

from bestckpt.integrations.loop import (
    EvaluationOutcome,
    TrainingEvaluation,
    best_when_recorded,
)
from bestckpt.runners import EvalSchedule
from bestckpt.tracking.tracker import BestCheckpointTracker

KIT = dict(sampler="pipeline_kit:make_sampler", scorer_spec="pipeline_kit:make_kit_scorer")
LOOP_LOGGER = "bestckpt.integrations.loop"


def _loop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What TrainingEvaluation itself logged in this (the training) process."""
    return [r.getMessage() for r in caplog.records if r.name == LOOP_LOGGER]


def _expected_new_best(tracker: BestCheckpointTracker) -> dict[int, bool]:
    """Replay the records in the order they were recorded: each is new best iff it beats every earlier one."""
    best = None
    out = {}
    for rec in sorted((r for r in tracker.records if r.status == "evaluated"), key=lambda r: r.time):
        score = rec.metrics["composite_score"]
        out[rec.step] = best is None or score > best
        best = score if out[rec.step] else best
    return out


def test_training_evaluation_loop_helper(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    protocol = make_protocol(tmp_path)
    caplog.set_level(logging.INFO)
    ckpt_dir = tmp_path / "exp" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    with TrainingEvaluation(ckpt_dir, protocol, "pipeline_kit:make_sampler", mode="inline", save_top_k=2,
                            keep_every_n_steps=0) as evaluation:
        evaluation.runner.evaluator.scorer = KitScorer()  # the protocol's default backbones need real weights
        for step in (100, 200, 300, 400):
            evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    recs = {r.step: r.status for r in evaluation.tracker.records}
    assert recs[200] == recs[400] == "evaluated" and recs[300] == "saved"
    assert "=== Best Checkpoint Summary ===" in caplog.text
    assert (ckpt_dir / "best_checkpoint_results.json").is_file()
    assert (tmp_path / "exp" / "evaluation_samples" / "0000200").is_dir()
    off_dir = tmp_path / "off" / "checkpoints"
    off_dir.mkdir(parents=True)
    with TrainingEvaluation(off_dir, protocol, "pipeline_kit:make_sampler", mode="off") as off:
        off.checkpoint_saved(100, save_checkpoint(off_dir / "0000100.pt", 100))
    assert [r.status for r in off.tracker.records] == ["saved"]
    assert off.results == [] and off.poll() == []
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainingEvaluation(off_dir, protocol, "pipeline_kit:make_sampler", mode="sometimes")
    with pytest.raises(ValueError, match="'module:factory' string"):
        TrainingEvaluation(off_dir, protocol, TinySampler(), mode="background")


def test_inline_result_callback(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    got: list[EvaluationOutcome] = []
    with TrainingEvaluation(ckpt_dir, protocol, KIT["sampler"], mode="inline", scorer_spec=KIT["scorer_spec"],
                            on_result=got.append, keep_every_n_steps=0) as evaluation:
        assert isinstance(evaluation.runner.evaluator.scorer, KitScorer)
        for step in (100, 200, 300, 400):
            evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    assert [o.step for o in got] == [200, 400] and got == evaluation.results
    recs = {r.step: r for r in evaluation.tracker.records}
    for o in got:
        assert o.ok and o.error is None and o.scores["composite_score"] == recs[o.step].metrics["composite_score"]
    assert {o.step: o.new_best for o in got} == _expected_new_best(evaluation.tracker)


def test_background_result_callback_gets_each_result_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    got: list[EvaluationOutcome] = []
    evaluation = TrainingEvaluation(ckpt_dir, protocol, KIT["sampler"], scorer_spec=KIT["scorer_spec"],
                                    schedule=EvalSchedule(every_n_checkpoints=1), batch_size=4,
                                    log_file=tmp_path / "worker.log", on_result=got.append, keep_every_n_steps=0)
    assert evaluation.checkpoint_saved(100, save_checkpoint(ckpt_dir / "0000100.pt", 100)) is True
    # poll delivers during training: wait for the first result (the timeout only bounds a hung worker)
    delivered: list[EvaluationOutcome] = []
    for _ in range(3):
        delivered += evaluation.poll(timeout=120)
        if delivered:
            break
    assert [o.step for o in delivered] == [100] and got == delivered
    assert delivered[0].ok and delivered[0].new_best  # the first evaluated checkpoint is best when recorded
    for step in (200, 300):
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    evaluation.close(wait=True)
    assert sorted(o.step for o in got) == [100, 200, 300]  # each once, whichever call delivered it
    assert got == evaluation.results
    assert evaluation.poll() == [] and len(got) == 3  # nothing delivered twice after close
    recs = {r.step: r for r in evaluation.tracker.records}
    assert all(recs[s].status == "evaluated" for s in (100, 200, 300))
    for o in got:
        assert o.scores["composite_score"] == recs[o.step].metrics["composite_score"]
        assert o.new_best == best_when_recorded(evaluation.tracker, o.step)
    assert {o.step: o.new_best for o in got} == _expected_new_best(evaluation.tracker)
    # the guide's lines, logged by this process: queued, and (the worker logs to a file) each result
    lines = _loop_lines(caplog)
    for step in (100, 200, 300):
        assert f"[Step {step}] Evaluating model performance at step {step}" in lines
        assert sum(line.startswith(f"[Step {step}] evaluated in ") for line in lines) == 1
    new_best = [o for o in got if o.new_best]
    assert sum(line.startswith("🏆 New best checkpoint! Score: ") for line in lines) == len(new_best)
    assert "=== Best Checkpoint Summary ===" in caplog.text
    assert "[Step 100] Evaluating model performance at step 100" in (tmp_path / "worker.log").read_text()


def _leave_pending(ckpt_dir: Path, steps: tuple[int, ...]) -> None:
    """What an interrupted run leaves: checkpoints registered for evaluation, never scored."""
    earlier = BestCheckpointTracker(ckpt_dir, is_writer=True, keep_every_n_steps=0)
    for step in steps:
        earlier.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step), evaluate=True)
    assert earlier.pending_steps() == list(steps)


def test_background_resumes_checkpoints_left_pending(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    _leave_pending(ckpt_dir, (100, 200))
    got: list[EvaluationOutcome] = []
    evaluation = TrainingEvaluation(ckpt_dir, protocol, KIT["sampler"], scorer_spec=KIT["scorer_spec"],
                                    schedule=EvalSchedule(every_n_checkpoints=1), batch_size=4,
                                    on_result=got.append, keep_every_n_steps=0)
    lines = _loop_lines(caplog)
    for step in (100, 200):
        assert f"[Step {step}] Evaluating model performance at step {step} (left pending by an earlier run)" in lines
    evaluation.checkpoint_saved(300, save_checkpoint(ckpt_dir / "0000300.pt", 300))
    evaluation.close(wait=True)
    assert sorted(o.step for o in got) == [100, 200, 300]
    assert {r.step: r.status for r in evaluation.tracker.records} == {100: "evaluated", 200: "evaluated",
                                                                      300: "evaluated"}
    lines = _loop_lines(caplog)
    assert "[Step 300] Evaluating model performance at step 300" in lines
    assert not any("300 (left pending" in line for line in lines)
    # no log_file: the worker's own lines reach stderr, so this process does not repeat them
    assert not any(" evaluated in " in line for line in lines)


def test_background_resume_can_be_left_to_the_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    _leave_pending(ckpt_dir, (100,))
    evaluation = TrainingEvaluation(ckpt_dir, protocol, KIT["sampler"], scorer_spec=KIT["scorer_spec"],
                                    resume_pending=False, keep_every_n_steps=0)
    evaluation.close(wait=True)
    assert evaluation.tracker.pending_steps() == [100] and evaluation.results == []
    assert not any("left pending" in line for line in _loop_lines(caplog))
