"""``TrainingEvaluation.wait`` (``BackgroundRunner.wait``): every queued evaluation's result arrives, the worker keeps
running (more checkpoints may come), and a result attached then (``tracker.annotate``) reaches the end of the run.
A held evaluation is not waited for past the bound: ``wait`` says so and the step stays pending."""
from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_kit import make_protocol, save_checkpoint
from waiting import Gate

from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule


def test_wait_delivers_every_result_and_keeps_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    evaluation = TrainingEvaluation(ckpt_dir, make_protocol(tmp_path), "pipeline_kit:make_sampler", mode="background",
                                    scorer_spec="pipeline_kit:make_kit_scorer", batch_size=4,
                                    schedule=EvalSchedule(every_n_checkpoints=1), log_file=tmp_path / "worker.log")
    try:
        for step in (100, 200):
            evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
        assert evaluation.wait(timeout=0.5) is False  # held by the gate: not waited for past the bound
        assert evaluation.tracker.pending_steps() == [100, 200]
        gate.open()
        assert evaluation.wait() is True
        assert evaluation.tracker.pending_steps() == []
        assert sorted(r.step for r in evaluation.results) == [100, 200]  # delivered (on_result, the guide's lines)
        best = evaluation.tracker.best
        assert best is not None
        evaluation.tracker.annotate(best.step, "holdout", {"accuracy": 0.5})
        evaluation.checkpoint_saved(300, save_checkpoint(ckpt_dir / "0000300.pt", 300))  # the worker still runs
        assert evaluation.wait() is True
        assert sorted(r.step for r in evaluation.results) == [100, 200, 300]
    finally:
        gate.open()
        evaluation.close()
    summary = evaluation.tracker.summary()
    assert summary["results"] == {str(best.step): {"holdout": {"accuracy": 0.5}}}
    assert summary["pending"] == []
