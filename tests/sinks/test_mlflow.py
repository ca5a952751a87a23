"""MLflow sink with the real library and a local SQLite store (no network), read back through MlflowClient.

Inline, background (results arriving after training moved on) and sidecar (`bestckpt watch`) evaluation log
every scalar at the checkpoint's training step, the images as artifacts and the best pointer as tags; an
unreachable tracking server costs one warning and nothing else; `bestckpt export` replays the same metrics.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import TESTS_DIR, make_protocol, save_checkpoint
from waiting import Gate

from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule
from bestckpt.sinks.tensorboard import IS_BEST_TAG, TAGS
from bestckpt.tracking.tracker import BestCheckpointTracker

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_kit import KEYS, check_run, child_run, history, training_run  # noqa: E402

SAMPLER, SCORER = "pipeline_kit:make_sampler", "pipeline_kit:make_kit_scorer"


def _train(evaluation: TrainingEvaluation, ckpt_dir: Path, client: MlflowClient | None, run_id: str | None,
           steps: tuple[int, ...] = (100, 200, 300, 400)) -> None:
    for step in steps:
        if client is not None and run_id is not None:
            client.log_metric(run_id, "train/loss", 1.0 / step, step=step)  # the training run's own writer
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))


def test_inline_logs_into_the_training_run(tmp_path: Path, mlflow_store: dict[str, Any]) -> None:
    client = mlflow_store["client"]
    run_id = training_run(mlflow_store, "inline")
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    from pipeline_kit import KitScorer, TinySampler

    evaluation = TrainingEvaluation(ckpt_dir, protocol, TinySampler(), mode="inline", batch_size=4,
                                    sinks={"mlflow": {"tracking_uri": mlflow_store["uri"], "run_id": run_id}},
                                    schedule=EvalSchedule(every_n_checkpoints=1), save_top_k=2)
    evaluation.runner.evaluator.scorer = KitScorer()
    _train(evaluation, ckpt_dir, client, run_id)
    evaluation.close()
    check_run(client, run_id, evaluation.tracker, protocol)
    assert set(history(client, run_id, "train/loss")) == {100, 200, 300, 400}  # training's own metric untouched
    assert client.get_run(run_id).info.status == "RUNNING"  # bestckpt never ends a run it did not create


def test_background_late_results_in_a_linked_run(tmp_path: Path, mlflow_store: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = mlflow_store["client"]
    parent = training_run(mlflow_store, "background")
    gate = Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))  # the worker's sampler waits: results arrive late
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, SAMPLER, mode="background", scorer_spec=SCORER,
                                    batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
                                    log_file=tmp_path / "worker.log",
                                    sinks={"mlflow": {"tracking_uri": mlflow_store["uri"], "parent_run_id": parent}})
    try:
        _train(evaluation, ckpt_dir, client, parent)
        assert evaluation.tracker.pending_steps() == [100, 200, 300, 400]  # training moved on; nothing scored yet
        for step in (500, 600):  # training keeps logging while the evaluations are held
            client.log_metric(parent, "train/loss", 1.0 / step, step=step)
    finally:
        gate.open()
    evaluation.close()
    child = child_run(client, parent)
    assert child.info.status == "FINISHED" and child.info.run_name == "bestckpt-evaluation"
    check_run(client, child.info.run_id, evaluation.tracker, protocol)
    assert set(history(client, parent, "train/loss")) == {100, 200, 300, 400, 500, 600}


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", COLUMNS="400", PYTHONWARNINGS="ignore", **extra)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bestckpt", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=600)


def test_sidecar_logs_into_the_training_run_and_export_replays_it(tmp_path: Path, mlflow_store: dict[str, Any]) -> None:
    client = mlflow_store["client"]
    run_id = training_run(mlflow_store, "sidecar")
    protocol = make_protocol(tmp_path)
    protocol_file = protocol.to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=3)
    for step in (100, 200, 300):  # the trainer registers its checkpoints; the sidecar scores them
        tracker.checkpoint_saved(step, str(save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)), evaluate=True)
    proc = _cli("watch", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", SAMPLER, "--scorer", SCORER,
                "--once", "--batch-size", "4", "--sink", "mlflow",
                "--sink-option", f"mlflow.tracking_uri={mlflow_store['uri']}", "--sink-option", f"mlflow.run_id={run_id}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    assert [r.status for r in tracker.records] == ["evaluated"] * 3
    check_run(client, run_id, tracker, protocol)
    # a result measured after scoring (tracker.annotate), in the state: the replay below carries it
    BestCheckpointTracker(ckpt_dir).annotate(200, "holdout", {"accuracy": 0.75, "note": "text is not a scalar"})

    # export: the same metrics from the state file, into a run of its own
    exp = client.create_experiment("export", artifact_location=str(mlflow_store["root"] / "export"))
    proc = _cli("export", str(ckpt_dir), "--sink", "mlflow",
                "--sink-option", f"mlflow.tracking_uri={mlflow_store['uri']}", "--sink-option", "mlflow.experiment_name=export",
                "--sink-option", "mlflow.run_name=replayed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported 3 evaluation(s) (0 failed) to mlflow" in proc.stderr
    (replayed,) = client.search_runs([exp])
    assert replayed.info.run_name == "replayed"
    check_run(client, replayed.info.run_id, tracker, protocol)
    for key in [*KEYS, IS_BEST_TAG]:
        assert history(client, replayed.info.run_id, key) == history(client, run_id, key), key
    assert history(client, replayed.info.run_id, "Evaluation/holdout/accuracy") == {200: 0.75}
    assert not history(client, replayed.info.run_id, "Evaluation/holdout/note")


def test_evaluate_command_logs_into_a_run_linked_to_the_training_run(tmp_path: Path,
                                                                    mlflow_store: dict[str, Any]) -> None:
    """`bestckpt evaluate --sink mlflow --sink-option mlflow.parent_run_id=...`: offline re-ranking logs every
    score at its checkpoint's step into bestckpt's own run nested under the training run, then ends that run."""
    from bestckpt.cli import main

    client = mlflow_store["client"]
    parent = training_run(mlflow_store, "evaluate")
    protocol = make_protocol(tmp_path)
    protocol_file = protocol.to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for step in (100, 200, 300):
        save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)
    assert main(["evaluate", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", SAMPLER, "--scorer", SCORER,
                 "--batch-size", "4", "--sink", "mlflow", "--sink-option", f"mlflow.tracking_uri={mlflow_store['uri']}",
                 "--sink-option", f"mlflow.parent_run_id={parent}"]) == 0
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    assert [r.status for r in tracker.records] == ["evaluated"] * 3
    child = child_run(client, parent)
    assert child.info.status == "FINISHED"
    check_run(client, child.info.run_id, tracker, protocol)


def test_unreachable_server_warns_once_and_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_kit import KitScorer, TinySampler

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: MLflow's own retries back off for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, TinySampler(), mode="inline", batch_size=4,
                                    sinks={"mlflow": {"tracking_uri": "http://127.0.0.1:9", "run_id": "0" * 32}},
                                    schedule=EvalSchedule(every_n_checkpoints=1))
    evaluation.runner.evaluator.scorer = KitScorer()
    caplog.set_level(logging.INFO)
    _train(evaluation, ckpt_dir, None, None)
    evaluation.close()
    warnings = [r for r in caplog.records if r.name == "bestckpt.sinks.base" and r.levelno == logging.WARNING]
    assert len([w for w in warnings if "sink failed (" in w.getMessage()]) == 1, [w.getMessage() for w in warnings]
    assert "mlflow" in warnings[0].getMessage() and "127.0.0.1:9" in warnings[0].getMessage()
    assert [r.status for r in evaluation.tracker.records] == ["evaluated"] * 4
    assert (ckpt_dir / "best_checkpoint_results.json").is_file()
    assert all(r.ok for r in evaluation.results)


def test_demo_logs_the_same_scores(tmp_path: Path, mlflow_store: dict[str, Any], offline: Path) -> None:
    """`bestckpt demo --sink mlflow --sink wandb`: the demo's background worker logs every recorded score at its
    step into both, and the best checkpoint's accuracy (measured after the last evaluation) at the end."""
    from wandb_offline import read_offline_runs

    client = mlflow_store["client"]
    run_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "bestckpt", "demo", "--quick", "--threads", "1", "--no-report",
                           "--run-dir", str(run_dir), "--sink", "mlflow", "--sink", "wandb",
                           "--sink-option", f"mlflow.tracking_uri={mlflow_store['uri']}",
                           "--sink-option", "mlflow.experiment_name=demo",
                           "--sink-option", f"mlflow.artifact_location={mlflow_store['root'] / 'demo'}",
                           "--sink-option", "wandb.project=demo"],
                          capture_output=True, text=True, timeout=540, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    tracker = BestCheckpointTracker(run_dir / "checkpoints", is_writer=False)
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    assert evaluated
    for name in evaluated[0].metrics:
        got = history(client, run.info.run_id, TAGS.get(name, f"Evaluation/{name}"))
        want = {r.step: r.metrics[name] for r in evaluated if r.metrics.get(name) is not None}
        assert got == pytest.approx(want), name
    assert client.get_run(run.info.run_id).data.tags["bestckpt.best_step"] == str(tracker.best.step)
    # the best checkpoint's attribute accuracy (measured after the last evaluation) at the best's step
    accuracy = json.loads((run_dir / "accuracy.json").read_text())
    assert accuracy["step"] == tracker.best.step
    for reader in ("classifier", "nearest_render"):
        assert accuracy[reader]
        for attribute, value in accuracy[reader].items():
            key = f"Evaluation/accuracy/{reader}/{attribute}"
            assert history(client, run.info.run_id, key) == {tracker.best.step: pytest.approx(value)}, key
    assert tracker.summary()["results"][str(tracker.best.step)]["accuracy"]["classifier"] == accuracy["classifier"]

    # W&B (offline): the same scores against Evaluation/step, the accuracy in the summary, a finished run
    (wb,) = read_offline_runs(offline)
    assert wb.project == "demo" and wb.exited and wb.exit_code == 0
    rows = {int(row["Evaluation/step"]): row for row in wb.rows_with("Evaluation/step")}
    assert set(rows) == {r.step for r in evaluated}
    for r in evaluated:
        for name, value in r.metrics.items():
            if value is not None:
                assert rows[r.step][TAGS.get(name, f"Evaluation/{name}")] == pytest.approx(value), (r.step, name)
    results = wb.summary["bestckpt"]["results"][str(tracker.best.step)]["accuracy"]
    assert results["classifier"] == pytest.approx(accuracy["classifier"])
    assert results["nearest_render"] == pytest.approx(accuracy["nearest_render"])
