"""Reading an MLflow run back through ``MlflowClient`` (local SQLite store, no network), for the sink tests.

``open_store`` makes the store (tests/conftest.py's session fixture ``mlflow_store`` holds one: creating its
tables takes seconds); ``training_run`` is what a training script does (its own run, in its own experiment);
``check_run`` asserts what bestckpt's MLflow sink logged for every evaluated record of a tracker: the scalars at
each checkpoint's training step, IsBest, the images with their prompts, the protocol/weights tags, the best
pointer, and the end-of-run summary artifacts. Import only after ``pytest.importorskip("mlflow")``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bestckpt.sinks.tensorboard import IS_BEST_TAG, TAGS

#: pipeline_kit.make_protocol's metrics and their MLflow keys (the TensorBoard tags)
METRICS = ("inception_score", "lpips", "fid", "kid", "composite_score")
KEYS = [TAGS[m] for m in METRICS]


def open_store(root: Path) -> dict[str, Any]:
    """A SQLite store under ``root``: ``{"uri", "root", "client"}``."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return {"uri": uri, "root": root, "client": MlflowClient(tracking_uri=uri)}


def training_run(store: dict[str, Any], name: str) -> str:
    """What the training script does: its own run, in experiment ``name`` whose artifacts go under the store."""
    client = store["client"]
    exp = client.create_experiment(name, artifact_location=str(store["root"] / name))
    return str(client.create_run(exp, run_name="train").info.run_id)


def child_run(client: MlflowClient, parent: str) -> Any:
    """The one run linked to ``parent`` by ``mlflow.parentRunId`` (bestckpt's own run)."""
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 1, [c.info.run_id for c in children]
    return children[0]


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def artifacts(client: MlflowClient, run_id: str, path: str) -> list[str]:
    return sorted(Path(f.path).name for f in client.list_artifacts(run_id, path))


def check_run(client: MlflowClient, run_id: str, tracker: Any, protocol: Any, *, weights: str = "ema") -> None:
    """Every evaluated record's scalars at its step, the images, the protocol/weights tags and the best pointer."""
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    assert evaluated
    for key, name in zip(KEYS, METRICS):
        want = {r.step: r.metrics[name] for r in evaluated if r.metrics.get(name) is not None}
        got = history(client, run_id, key)
        assert set(got) == set(want), (key, got, want)
        for step, value in want.items():
            assert got[step] == pytest.approx(value), (key, step)
    assert set(history(client, run_id, IS_BEST_TAG)) == {r.step for r in evaluated}
    run = client.get_run(run_id)
    best = tracker.best
    assert best is not None
    assert run.data.tags["bestckpt.best_step"] == str(best.step)
    assert run.data.tags["bestckpt.best_path"].endswith(Path(best.path).name)
    assert run.data.tags["bestckpt.protocol_hash"] == protocol.hash
    assert run.data.tags["bestckpt.weights"] == weights
    step = evaluated[0].step
    folder = f"evaluation_samples/{step:07d}"
    files = artifacts(client, run_id, folder)
    assert "eval_comparison_000.jpg" in files and "progress_grid.jpg" in files and "captions.json" in files
    captions = json.loads(Path(client.download_artifacts(run_id, f"{folder}/captions.json")).read_text())
    assert captions["eval_comparison_000.jpg"].endswith(": a red square")
    assert f"{step:07d}.json" in artifacts(client, run_id, "bestckpt/evaluations")
    assert {"summary.json", "best_checkpoint_results.json"} <= set(artifacts(client, run_id, "bestckpt"))
    summary = json.loads(Path(client.download_artifacts(run_id, "bestckpt/summary.json")).read_text())
    assert summary["best_step"] == best.step  # the end-of-run summary, sent once at finish
