"""The W&B sink through bestckpt's pipeline (real wandb, offline, no network), read back from the run files.

- inline: the evaluation is recorded in the training process, which logs into its own training run
  (``run="current"``); the training's own rows are all kept.
- background: the worker process logs into a run of its own, grouped with the training run
  (``linked_settings``); results arrive after training moved on (a gate holds the worker's sampler).
- sidecar: ``bestckpt watch --sink wandb`` logs into a run of its own; ``bestckpt export`` replays the
  same rows from the state file.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import TESTS_DIR, make_protocol, save_checkpoint
from waiting import Gate
from wandb_offline import OfflineRun, read_offline_runs

from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule
from bestckpt.sinks.tensorboard import IS_BEST_TAG, TAGS
from bestckpt.sinks.wandb import BEST_KEY, COMPARISONS_KEY, STEP_METRIC, linked_settings
from bestckpt.tracking.tracker import BestCheckpointTracker

wandb = pytest.importorskip("wandb")

SAMPLER, SCORER = "pipeline_kit:make_sampler", "pipeline_kit:make_kit_scorer"
METRICS = ("inception_score", "lpips", "fid", "kid", "composite_score")  # make_protocol's metrics



def _scalar_rows(run: OfflineRun) -> dict[int, dict[str, Any]]:
    """Evaluation rows by their Evaluation/step, scalars only (each evaluation exactly once)."""
    rows = run.rows_with(STEP_METRIC)
    steps = [int(r[STEP_METRIC]) for r in rows]
    assert len(set(steps)) == len(steps), f"an evaluation was logged twice: {steps}"
    return {int(r[STEP_METRIC]): {k: v for k, v in r.items() if k.startswith("Evaluation/") and "/" not in k[11:]}
            for r in rows}


def _check_run(run: OfflineRun, tracker: BestCheckpointTracker) -> None:
    """Every evaluated record's scalars at its training step, IsBest, images with prompts, the best pointer."""
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    assert evaluated
    assert {"name": "", "glob_name": "Evaluation/*", "step_metric": STEP_METRIC, "hidden": False} in run.metrics
    rows = _scalar_rows(run)
    assert set(rows) == {r.step for r in evaluated}
    full = {int(r[STEP_METRIC]): r for r in run.rows_with(STEP_METRIC)}
    for record in evaluated:
        row = rows[record.step]
        for name in METRICS:
            assert row[TAGS[name]] == pytest.approx(record.metrics[name]), (name, record.step)
        assert row[IS_BEST_TAG] in (0, 1)
        assert row["Evaluation/protocol"] == record.protocol_hash and row["Evaluation/weights"] == "ema"
        captions = full[record.step][f"{COMPARISONS_KEY}/captions"]
        assert captions[0].endswith(": a red square"), captions
        for name in full[record.step][f"{COMPARISONS_KEY}/filenames"]:
            assert (run.folder / "files" / name).is_file()
    best = tracker.best
    assert best is not None
    assert run.summary[BEST_KEY]["step"] == best.step
    assert Path(run.summary[BEST_KEY]["path"]).name == Path(best.path).name  # live: absolute; export: as recorded
    assert run.summary["bestckpt"]["best_step"] == best.step  # the summary block at the end
    assert "best_checkpoint_results.json" in run.files


def _train(evaluation: TrainingEvaluation, ckpt_dir: Path, train: Any, steps: tuple[int, ...]) -> None:
    for step in steps:
        train.log({"Train/Loss": 1.0 / step}, step=step)  # the training run's own writer, explicit steps
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
        train.log({"Train/LR": 0.1}, step=step)  # the same step again after the evaluation was logged


def test_inline_logs_into_the_training_run_and_keeps_its_rows(tmp_path: Path, offline: Path) -> None:
    from pipeline_kit import KitScorer, TinySampler

    train = wandb.init(project="t2i", dir=str(offline), settings=wandb.Settings(console="off"))
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, TinySampler(), mode="inline", batch_size=4,
                                    sinks={"wandb": {"run": "current"}},
                                    schedule=EvalSchedule(every_n_checkpoints=1), save_top_k=2)
    evaluation.runner.evaluator.scorer = KitScorer()
    _train(evaluation, ckpt_dir, train, (100, 200, 300))
    evaluation.close()
    assert wandb.run is train  # bestckpt never finishes (or replaces) a run it did not start
    train.finish()

    (run,) = read_offline_runs(offline)
    _check_run(run, evaluation.tracker)
    by_step = {r["_step"]: r for r in run.history}
    for step in (100, 200, 300):  # nothing of the training's own logging was refused
        assert by_step[step]["Train/Loss"] == pytest.approx(1.0 / step) and by_step[step]["Train/LR"] == 0.1


def test_background_late_results_in_a_run_grouped_with_the_training_run(
        tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = wandb.init(project="t2i", group="exp-7", dir=str(offline), settings=wandb.Settings(console="off"))
    gate = Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))  # the worker's sampler waits: results arrive late
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, SAMPLER, mode="background", scorer_spec=SCORER,
                                    batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
                                    log_file=tmp_path / "worker.log", sinks={"wandb": linked_settings(train)})
    try:
        _train(evaluation, ckpt_dir, train, (100, 200, 300))
        assert evaluation.tracker.pending_steps() == [100, 200, 300]  # training moved on; nothing scored yet
        for step in (400, 500):  # training keeps logging while the evaluations are held
            train.log({"Train/Loss": 1.0 / step}, step=step)
    finally:
        gate.open()
    evaluation.close()
    train.finish()

    runs = {r.run_id: r for r in read_offline_runs(offline)}
    assert len(runs) == 2, list(runs)
    training = runs.pop(train.id)
    (evaluation_run,) = runs.values()
    assert (evaluation_run.project, evaluation_run.group, evaluation_run.job_type) == ("t2i", "exp-7",
                                                                                      "bestckpt-evaluation")
    assert evaluation_run.config["bestckpt/training_run_id"] == train.id
    assert evaluation_run.exited
    _check_run(evaluation_run, evaluation.tracker)
    assert [r["_step"] for r in training.rows_with("Train/Loss")] == [100, 200, 300, 400, 500]
    assert training.rows_with(STEP_METRIC) == []  # one writer per run: the worker never touched it


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bestckpt", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_sidecar_logs_a_run_of_its_own_and_export_replays_the_same_rows(tmp_path: Path, offline: Path) -> None:
    protocol_file = make_protocol(tmp_path).to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=3)
    for step in (100, 200, 300):  # the trainer registers its checkpoints; the sidecar scores them
        tracker.checkpoint_saved(step, str(save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)), evaluate=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", COLUMNS="400", PYTHONWARNINGS="ignore")
    proc = _cli("watch", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", SAMPLER, "--scorer", SCORER,
                "--once", "--batch-size", "4", "--sink", "wandb", "--sink-option", "wandb.project=t2i",
                "--sink-option", "wandb.group=exp-7", "--sink-option", "wandb.name=sidecar",
                "--sink-option", "wandb.training_run=abc123", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    BestCheckpointTracker(ckpt_dir).annotate(200, "holdout", {"accuracy": 0.75})  # measured after scoring
    proc = _cli("export", str(ckpt_dir), "--sink", "wandb", "--sink-option", "wandb.project=t2i",
                "--sink-option", "wandb.name=replayed", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported 3 evaluation(s) (0 failed) to wandb" in proc.stderr

    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    assert [r.status for r in tracker.records] == ["evaluated"] * 3
    runs = {r.name: r for r in read_offline_runs(offline)}
    sidecar, replayed = runs["sidecar"], runs["replayed"]
    assert sidecar.group == "exp-7" and sidecar.exited and replayed.exited
    assert sidecar.config["bestckpt/training_run_id"] == "abc123"  # the link to the training run
    for run in (sidecar, replayed):
        _check_run(run, tracker)
    assert _scalar_rows(replayed) == _scalar_rows(sidecar)  # the same metrics, IsBest included
    assert replayed.summary["bestckpt"]["results"] == {"200": {"holdout": {"accuracy": 0.75}}}


def test_the_training_run_object_sent_to_the_worker_is_refused_and_training_goes_on(
        tmp_path: Path, offline: Path) -> None:
    """``{"run": run}`` in background mode: the worker gets an attached copy of the training run (wandb pickles
    runs); a second writer is refused with one warning naming the fix, and evaluation is recorded as always."""
    train = wandb.init(project="t2i", dir=str(offline), settings=wandb.Settings(console="off"))
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    log_file = tmp_path / "worker.log"
    evaluation = TrainingEvaluation(ckpt_dir, make_protocol(tmp_path), SAMPLER, mode="background",
                                    scorer_spec=SCORER, batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
                                    log_file=log_file, sinks={"wandb": {"run": train}})
    _train(evaluation, ckpt_dir, train, (100, 200))
    evaluation.close()
    train.finish()
    assert [r.status for r in evaluation.tracker.records] == ["evaluated"] * 2
    warnings = [line for line in log_file.read_text().splitlines() if "the wandb sink failed (" in line]
    assert len(warnings) == 1 and "one writer" in warnings[0] and "linked_settings" in warnings[0], warnings
    (run,) = read_offline_runs(offline)  # only the training run, with its own rows only
    assert run.rows_with(STEP_METRIC) == [] and len(run.rows_with("Train/Loss")) == 2
