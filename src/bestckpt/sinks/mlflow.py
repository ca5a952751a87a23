"""MLflow sink: the guide's ``Evaluation/*`` scalars at the checkpoint's step, images as artifacts, the best as tags.

Two ways to attach (both documented in ``docs/sinks.md``):

- ``run_id=<the training run's id>``: log INTO the training run. MLflow accepts several writers on one run
  when each metric carries an explicit step, so the background worker or ``bestckpt watch`` can write the
  evaluation curves beside the training loss. bestckpt never ends a run it did not create.
- no ``run_id``: bestckpt's own run (name ``run_name``, default ``bestckpt-evaluation``) in ``experiment_name``
  (default: the parent's experiment, else ``bestckpt``), linked to ``parent_run_id`` when given (the
  ``mlflow.parentRunId`` tag: it shows nested under the training run). The run is found again by its
  ``bestckpt.checkpoint_dir`` tag, so a restarted worker, ``watch`` and ``export`` continue the same run.

What is logged, per evaluation (at ``step`` = the checkpoint's training step):
  metrics ``Evaluation/CLIP_Score`` ... ``Evaluation/Composite_Score`` (:data:`~bestckpt.sinks.tensorboard.TAGS`),
  ``<tag>_CI_low``/``<tag>_CI_high`` (95% intervals), ``Evaluation/IsBest`` (1/0); tags ``bestckpt.protocol_hash``,
  ``bestckpt.weights``; artifacts ``evaluation_samples/<step:07d>/`` (the comparison images, the progress grid and
  ``captions.json``: file name -> caption with the prompt) and ``bestckpt/evaluations/<step:07d>.json``
  (scores, intervals, weights, protocol, error). A failed evaluation logs no metric (no made-up value), only its JSON
  and the tag ``bestckpt.last_error``.
Best checkpoint: tags ``bestckpt.best_step``, ``bestckpt.best_path``, ``bestckpt.best.<metric>`` (tags, not params:
  MLflow params cannot change once set, and the best moves). ``upload_best=True`` also uploads the checkpoint
  under ``best_checkpoint/<step:07d>/`` (off by default: checkpoints are large).
End of run: artifacts ``bestckpt/summary.json`` and ``bestckpt/best_checkpoint_results.json``; bestckpt's own run
  ends ``FINISHED``, or ``KILLED`` with the tag ``bestckpt.pending_steps`` when evaluations were cut short (training
  stopped without waiting). A later ``bestckpt evaluate``/``watch`` finds the run again, sets it ``RUNNING`` while
  it evaluates, and ends it ``FINISHED`` once nothing is pending.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"the MLflow sink needs mlflow: pip install 'bestckpt[mlflow]'. Import error: {exc}") from exc

from bestckpt.sinks.base import EvaluationEvent
from bestckpt.sinks.tensorboard import IS_BEST_TAG, TAGS
from bestckpt.tracking.attached import result_scalars

__all__ = ["MlflowSink", "metric_key"]

logger = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "bestckpt-evaluation"
DIR_TAG = "bestckpt.checkpoint_dir"
#: tag naming the steps still pending evaluation when the run was finished (comma-separated; absent when none)
PENDING_TAG = "bestckpt.pending_steps"


def metric_key(name: str) -> str:
    """The MLflow metric name of a bestckpt metric (the TensorBoard tag; MLflow accepts '/' in names)."""
    return TAGS.get(name, f"Evaluation/{name}")


def _finite(value: object) -> bool:
    return (value is not None and not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(float(value)))


class MlflowSink:
    """Writes evaluations into an MLflow run through :class:`mlflow.tracking.MlflowClient` (explicit steps)."""

    def __init__(self, tracking_uri: str | None = None, *, run_id: str | None = None,
                 parent_run_id: str | None = None, experiment_name: str | None = None, run_name: str | None = None,
                 artifact_location: str | None = None, upload_best: bool = False, log_images: bool = True,
                 checkpoint_dir: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.upload_best = bool(upload_best)
        self.log_images = bool(log_images)
        self.own_run = run_id is None
        if run_id is not None:
            self.run_id = str(run_id)
            self.client.get_run(self.run_id)  # fails early (and clearly) on a wrong id or an unreachable server
        else:
            self.run_id = self._own_run(parent_run_id, experiment_name, run_name or DEFAULT_RUN_NAME,
                                        artifact_location, checkpoint_dir)
        self._ended = False

    def _own_run(self, parent: str | None, experiment_name: str | None, run_name: str,
                 artifact_location: str | None, checkpoint_dir: str | None) -> str:
        """bestckpt's own run: found again by checkpoint dir (and parent), else created; linked to ``parent``."""
        if experiment_name is None and parent is not None:
            experiment_id = self.client.get_run(parent).info.experiment_id
        else:
            name = experiment_name or "bestckpt"
            exp = self.client.get_experiment_by_name(name)
            experiment_id = (exp.experiment_id if exp is not None
                             else self.client.create_experiment(name, artifact_location=artifact_location))
        tags = {"mlflow.runName": run_name}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        if checkpoint_dir is not None:
            tags[DIR_TAG] = str(Path(checkpoint_dir).resolve())
            if "'" not in tags[DIR_TAG]:
                query = f"tags.`{DIR_TAG}` = '{tags[DIR_TAG]}'"
                if parent is not None:
                    query += f" and tags.`mlflow.parentRunId` = '{parent}'"
                found = self.client.search_runs([experiment_id], query, max_results=1)
                if found:
                    run = found[0].info
                    if run.status != "RUNNING":  # ended earlier (KILLED: evaluations were left pending)
                        self.client.update_run(run.run_id, status="RUNNING")  # evaluating again
                    return str(run.run_id)
        return str(self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id)

    def log_evaluation(self, event: EvaluationEvent) -> None:
        """Metrics at ``event.step``, the protocol/weights tags, the evaluation JSON and its images."""
        now = int(time.time() * 1000)
        step = int(event.step)
        metrics: list[Metric] = []
        tags = []
        if event.ok:
            for name, value in event.scores.items():
                if not _finite(value):
                    continue
                key = metric_key(name)
                metrics.append(Metric(key, float(value), now, step))  # type: ignore[arg-type]
                bounds = event.intervals.get(name)
                if bounds is not None and all(_finite(b) for b in bounds):
                    metrics.append(Metric(key + "_CI_low", float(bounds[0]), now, step))
                    metrics.append(Metric(key + "_CI_high", float(bounds[1]), now, step))
            if event.is_best is not None:
                metrics.append(Metric(IS_BEST_TAG, 1.0 if event.is_best else 0.0, now, step))
        else:
            tags.append(RunTag("bestckpt.last_error", f"step {step}: {event.error}"[:5000]))
        if event.protocol_hash:
            tags.append(RunTag("bestckpt.protocol_hash", str(event.protocol_hash)))
        if event.weights:
            tags.append(RunTag("bestckpt.weights", str(event.weights)))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        record = {"step": step, "epoch": event.epoch, "scores": dict(event.scores),
                  "intervals": {k: list(v) for k, v in event.intervals.items()}, "protocol_hash": event.protocol_hash,
                  "weights": event.weights, "is_best": event.is_best, "error": event.error, "path": event.path}
        self.client.log_dict(self.run_id, record, f"bestckpt/evaluations/{step:07d}.json")
        if self.log_images and event.images:
            self._log_images(step, event)

    def _log_images(self, step: int, event: EvaluationEvent) -> None:
        """The images under ``evaluation_samples/<step>/`` plus ``captions.json`` (file name -> caption)."""
        folder = f"evaluation_samples/{step:07d}"
        captions: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="bestckpt-mlflow-") as tmp:
            for path, caption in event.images:
                src = Path(path)
                if not src.is_file():
                    continue
                name = src.name
                if name in captions:  # two images with the same name: keep both
                    name = f"{src.stem}_{len(captions)}{src.suffix}"
                shutil.copyfile(src, os.path.join(tmp, name))  # a snapshot: the grid is rewritten later
                captions[name] = caption
            if captions:
                Path(tmp, "captions.json").write_text(json.dumps(captions, indent=1), encoding="utf-8")
                self.client.log_artifacts(self.run_id, tmp, folder)

    def log_best(self, step: int, path: str, scores: Mapping[str, float | None]) -> None:
        """Tags pointing at the best checkpoint; its files only with ``upload_best=True``."""
        tags = [RunTag("bestckpt.best_step", str(int(step))), RunTag("bestckpt.best_path", str(path))]
        tags += [RunTag(f"bestckpt.best.{name}", repr(float(v))) for name, v in scores.items()
                 if v is not None and _finite(v)]
        self.client.log_batch(self.run_id, tags=tags)
        if self.upload_best:
            target = Path(path)
            dest = f"best_checkpoint/{int(step):07d}"
            if target.is_dir():
                self.client.log_artifacts(self.run_id, str(target), dest)
            elif target.is_file():
                self.client.log_artifact(self.run_id, str(target), dest)

    def finish(self, summary: Mapping[str, Any], results_file: Path | None) -> None:
        """The summary and the results JSON as artifacts; bestckpt's own run is then ended.

        Steps still pending evaluation (training stopped with ``close(wait=False)``, Ctrl-C, a crash) are named
        in the tag ``bestckpt.pending_steps`` (removed once none is left), and bestckpt's own run ends
        ``KILLED`` (its evaluation was cut short) instead of ``FINISHED``; whoever evaluates them later
        (``bestckpt evaluate``/``watch``) continues the same run and ends it ``FINISHED``."""
        self.client.log_dict(self.run_id, dict(summary), "bestckpt/summary.json")
        self._log_results(summary.get("results"))
        if results_file is not None and Path(results_file).is_file():
            self.client.log_artifact(self.run_id, str(results_file), "bestckpt")
        tags = []
        if summary.get("best_step") is not None:  # the final word (a late result may have moved the best)
            tags += [RunTag("bestckpt.best_step", str(summary["best_step"])),
                     RunTag("bestckpt.best_path", str(summary.get("best_checkpoint")))]
        pending = sorted(int(s) for s in summary.get("pending") or ())
        if pending:
            tags.append(RunTag(PENDING_TAG, ",".join(map(str, pending))[:5000]))
        elif PENDING_TAG in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, PENDING_TAG)
        if tags:
            self.client.log_batch(self.run_id, tags=tags)
        if self.own_run and not self._ended:
            self.client.set_terminated(self.run_id, "KILLED" if pending else "FINISHED")
            self._ended = True

    def _log_results(self, results: Mapping[str, Mapping[str, Any]] | None) -> None:
        """Results attached after scoring (``tracker.annotate``): ``Evaluation/<name>/...`` metrics at their step."""
        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for step, tag, value in result_scalars(results)]
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def close(self) -> None:
        """Nothing buffered: every call above is synchronous. Own runs stay open until :meth:`finish`
        (a background worker may be restarted and continue the run)."""
