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

SAMPLER, SCORER = "pipeline_kit:make_sampler", "pipeline_kit:make_kit_scorer"
KEYS = [TAGS[m] for m in ("inception_score", "lpips", "fid", "kid", "composite_score")]  # make_protocol's metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One SQLite store for the module (creating its tables takes seconds); each test uses its own experiment."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return {"uri": uri, "root": root, "client": MlflowClient(tracking_uri=uri)}


def _training_run(store: dict[str, Any], name: str) -> str:
    """What the training script does: its own run, in an experiment whose artifacts go to a temp folder."""
    client = store["client"]
    exp = client.create_experiment(name, artifact_location=str(store["root"] / name))
    return str(client.create_run(exp, run_name="train").info.run_id)


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _artifacts(client: MlflowClient, run_id: str, path: str) -> list[str]:
    return sorted(Path(f.path).name for f in client.list_artifacts(run_id, path))


def _check_run(client: MlflowClient, run_id: str, tracker: BestCheckpointTracker, protocol: Any) -> None:
    """Every evaluated record's scalars at its step, the images, the protocol/weights tags and the best pointer."""
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    assert evaluated
    for key, name in zip(KEYS, ("inception_score", "lpips", "fid", "kid", "composite_score")):
        want = {r.step: r.metrics[name] for r in evaluated if r.metrics.get(name) is not None}
        got = _history(client, run_id, key)
        assert set(got) == set(want), (key, got, want)
        for step, value in want.items():
            assert got[step] == pytest.approx(value), (key, step)
    assert set(_history(client, run_id, IS_BEST_TAG)) == {r.step for r in evaluated}
    run = client.get_run(run_id)
    best = tracker.best
    assert best is not None
    assert run.data.tags["bestckpt.best_step"] == str(best.step)
    assert run.data.tags["bestckpt.best_path"].endswith(Path(best.path).name)
    assert run.data.tags["bestckpt.protocol_hash"] == protocol.hash
    assert run.data.tags["bestckpt.weights"] == "ema"
    step = evaluated[0].step
    folder = f"evaluation_samples/{step:07d}"
    files = _artifacts(client, run_id, folder)
    assert "eval_comparison_000.jpg" in files and "progress_grid.jpg" in files and "captions.json" in files
    captions = json.loads(Path(client.download_artifacts(run_id, f"{folder}/captions.json")).read_text())
    assert captions["eval_comparison_000.jpg"].endswith(": a red square")
    assert f"{step:07d}.json" in _artifacts(client, run_id, "bestckpt/evaluations")
    assert {"summary.json", "best_checkpoint_results.json"} <= set(_artifacts(client, run_id, "bestckpt"))


def _train(evaluation: TrainingEvaluation, ckpt_dir: Path, client: MlflowClient | None, run_id: str | None,
           steps: tuple[int, ...] = (100, 200, 300, 400)) -> None:
    for step in steps:
        if client is not None and run_id is not None:
            client.log_metric(run_id, "train/loss", 1.0 / step, step=step)  # the training run's own writer
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))


def test_inline_logs_into_the_training_run(tmp_path: Path, store: dict[str, Any]) -> None:
    client = store["client"]
    run_id = _training_run(store, "inline")
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    from pipeline_kit import KitScorer, TinySampler

    evaluation = TrainingEvaluation(ckpt_dir, protocol, TinySampler(), mode="inline", batch_size=4,
                                    sinks={"mlflow": {"tracking_uri": store["uri"], "run_id": run_id}},
                                    schedule=EvalSchedule(every_n_checkpoints=1), save_top_k=2)
    evaluation.runner.evaluator.scorer = KitScorer()
    _train(evaluation, ckpt_dir, client, run_id)
    evaluation.close()
    _check_run(client, run_id, evaluation.tracker, protocol)
    assert set(_history(client, run_id, "train/loss")) == {100, 200, 300, 400}  # training's own metric untouched
    assert client.get_run(run_id).info.status == "RUNNING"  # bestckpt never ends a run it did not create


def test_background_late_results_in_a_linked_run(tmp_path: Path, store: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = store["client"]
    parent = _training_run(store, "background")
    gate = Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))  # the worker's sampler waits: results arrive late
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, SAMPLER, mode="background", scorer_spec=SCORER,
                                    batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
                                    log_file=tmp_path / "worker.log",
                                    sinks={"mlflow": {"tracking_uri": store["uri"], "parent_run_id": parent}})
    try:
        _train(evaluation, ckpt_dir, client, parent)
        assert evaluation.tracker.pending_steps() == [100, 200, 300, 400]  # training moved on; nothing scored yet
        for step in (500, 600):  # training keeps logging while the evaluations are held
            client.log_metric(parent, "train/loss", 1.0 / step, step=step)
    finally:
        gate.open()
    evaluation.close()
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 1, [c.info.run_id for c in children]
    child = children[0]
    assert child.info.status == "FINISHED" and child.info.run_name == "bestckpt-evaluation"
    _check_run(client, child.info.run_id, evaluation.tracker, protocol)
    assert set(_history(client, parent, "train/loss")) == {100, 200, 300, 400, 500, 600}


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", COLUMNS="400", PYTHONWARNINGS="ignore", **extra)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bestckpt", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=600)


def test_sidecar_logs_into_the_training_run_and_export_replays_it(tmp_path: Path, store: dict[str, Any]) -> None:
    client = store["client"]
    run_id = _training_run(store, "sidecar")
    protocol = make_protocol(tmp_path)
    protocol_file = protocol.to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=3)
    for step in (100, 200, 300):  # the trainer registers its checkpoints; the sidecar scores them
        tracker.checkpoint_saved(step, str(save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)), evaluate=True)
    proc = _cli("watch", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", SAMPLER, "--scorer", SCORER,
                "--once", "--batch-size", "4", "--sink", "mlflow", "--sink-option", f"mlflow.tracking_uri={store['uri']}",
                "--sink-option", f"mlflow.run_id={run_id}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    assert [r.status for r in tracker.records] == ["evaluated"] * 3
    _check_run(client, run_id, tracker, protocol)
    # a result measured after scoring (tracker.annotate), in the state: the replay below carries it
    BestCheckpointTracker(ckpt_dir).annotate(200, "holdout", {"accuracy": 0.75, "note": "text is not a scalar"})

    # export: the same metrics from the state file, into a run of its own
    exp = client.create_experiment("export", artifact_location=str(store["root"] / "export"))
    proc = _cli("export", str(ckpt_dir), "--sink", "mlflow", "--sink-option", f"mlflow.tracking_uri={store['uri']}",
                "--sink-option", "mlflow.experiment_name=export", "--sink-option", "mlflow.run_name=replayed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported 3 evaluation(s) (0 failed) to mlflow" in proc.stderr
    (replayed,) = client.search_runs([exp])
    assert replayed.info.run_name == "replayed"
    _check_run(client, replayed.info.run_id, tracker, protocol)
    for key in [*KEYS, IS_BEST_TAG]:
        assert _history(client, replayed.info.run_id, key) == _history(client, run_id, key), key
    assert _history(client, replayed.info.run_id, "Evaluation/holdout/accuracy") == {200: 0.75}
    assert not _history(client, replayed.info.run_id, "Evaluation/holdout/note")


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


def test_demo_logs_the_same_scores(tmp_path: Path, store: dict[str, Any]) -> None:
    """`bestckpt demo --sink mlflow`: the demo's background worker logs every recorded score at its step."""
    client = store["client"]
    run_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "bestckpt", "demo", "--quick", "--threads", "1", "--no-report",
                           "--run-dir", str(run_dir), "--sink", "mlflow",
                           "--sink-option", f"mlflow.tracking_uri={store['uri']}",
                           "--sink-option", "mlflow.experiment_name=demo",
                           "--sink-option", f"mlflow.artifact_location={store['root'] / 'demo'}"],
                          capture_output=True, text=True, timeout=540, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    tracker = BestCheckpointTracker(run_dir / "checkpoints", is_writer=False)
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    assert evaluated
    for name in evaluated[0].metrics:
        got = _history(client, run.info.run_id, TAGS.get(name, f"Evaluation/{name}"))
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
            assert _history(client, run.info.run_id, key) == {tracker.best.step: pytest.approx(value)}, key
    assert tracker.summary()["results"][str(tracker.best.step)]["accuracy"]["classifier"] == accuracy["classifier"]
