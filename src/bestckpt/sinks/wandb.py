"""Weights & Biases sink: the guide's ``Evaluation/*`` scalars against the checkpoint's training step, the
evaluation images, the best checkpoint as a pointer in the run summary, and the results at the end.

Late-arriving evaluations: W&B refuses to log to a step below its own step counter, and background or sidecar
results arrive after training moved on. So every evaluation row carries ``Evaluation/step`` (the checkpoint's
training step) and ``Evaluation/*`` is defined against it (``define_metric(..., step_metric=...)``): the curves
line up with training whatever W&B's own step is, and rows may arrive in any order.

One writer per W&B run. Two ways to use this sink (``docs/sinks-wandb.md``):

- its own run (the default): ``wandb.init`` with ``project``/``group``/``job_type``... The sink is the run's
  only writer, in whichever process holds it (the training process relaying results, a worker, a sidecar).
  ``group`` links it to the training run in the UI; ``run_id`` + ``resume`` log into an existing run by id
  (needs the W&B server: a sidecar after the training run ended).
- the training run itself (``run=<wandb Run>`` or ``run="current"`` for ``wandb.run``), in the training
  process only. The sink never advances that run's step counter: each row is merged into the training's open
  row (``commit=False``) and committed by the training's next ``log``; a second evaluation waits until the
  training has logged again, so nothing is overwritten and the training's own logging is never refused.

Nothing of wandb is imported until the sink is built; the run is started on first use, and a failed start
is remembered (the next calls fail at once instead of waiting for the server again).
"""
from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt.sinks.tensorboard import IS_BEST_TAG, TAGS

if TYPE_CHECKING:
    from bestckpt.sinks.base import EvaluationEvent

__all__ = ["BEST_KEY", "COMPARISONS_KEY", "GRID_KEY", "STEP_METRIC", "WandbSink", "evaluation_row", "linked_settings"]

logger = logging.getLogger(__name__)

#: the x-axis of every ``Evaluation/*`` metric: the evaluated checkpoint's training step
STEP_METRIC = "Evaluation/step"
#: per-prompt comparison images (reference | generated), one list per evaluation, captioned with the prompts
COMPARISONS_KEY = "Evaluation/Comparisons"
#: the progress grid (rows: prompts, columns: evaluated steps)
GRID_KEY = "Evaluation/ProgressGrid"
#: run summary key of the best checkpoint pointer: {"step", "path", "scores"}
BEST_KEY = "best_checkpoint"
_GRID_FILE = "progress_grid.jpg"  # bestckpt.evaluation.samples.GRID_NAME (not imported: it pulls in torch)


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def evaluation_row(event: EvaluationEvent) -> dict[str, Any]:
    """The scalar part of one evaluation's row (same tags as TensorBoard; no images, no made-up values)."""
    row: dict[str, Any] = {STEP_METRIC: int(event.step)}
    for name, value in event.scores.items():
        number = _finite(value)
        if number is None:
            continue
        tag = TAGS.get(name, f"Evaluation/{name}")
        row[tag] = number
        bounds = event.intervals.get(name)
        if bounds is not None and all(_finite(b) is not None for b in bounds):
            row[tag + "_CI_low"], row[tag + "_CI_high"] = float(bounds[0]), float(bounds[1])
    if event.is_best is not None:
        row[IS_BEST_TAG] = 1.0 if event.is_best else 0.0
    if event.epoch is not None:
        row["Evaluation/epoch"] = int(event.epoch)
    if event.protocol_hash:
        row["Evaluation/protocol"] = str(event.protocol_hash)
    if event.weights:
        row["Evaluation/weights"] = str(event.weights)
    return row


def linked_settings(run: Any, **overrides: Any) -> dict[str, Any]:
    """Settings for a W&B sink whose run of its own sits next to the training ``run``: same project, entity,
    mode and folder, the training run's group (its id when it has none), and the training run's id and path in
    the config. Plain values, so they travel to the background worker process::

        run = wandb.init(project="t2i", group="exp-7")
        TrainingEvaluation(..., sinks={"wandb": linked_settings(run)})
    """
    settings: dict[str, Any] = {
        "project": run.project, "group": run.group or run.id, "job_type": "bestckpt-evaluation",
        "name": f"{run.name or run.id}-evaluation",
        "training_run": run.id, "config": {"bestckpt/training_run_path": str(run.path)},
    }
    if run.entity:
        settings["entity"] = run.entity
    mode = getattr(run.settings, "mode", None)
    if mode in ("online", "offline", "disabled"):
        settings["mode"] = mode
    root = getattr(run.settings, "root_dir", None)
    if root:
        settings["dir"] = str(root)
    settings.update(overrides)
    return settings


class WandbSink:
    """Logs evaluations into a W&B run (see the module docstring for which run and why).

    Own run: ``project``, ``entity``, ``name``, ``group``, ``job_type``, ``tags``, ``notes``, ``config``,
    ``mode`` (``"online"``/``"offline"``/``"disabled"``; None: ``WANDB_MODE`` decides), ``dir`` (default:
    ``WANDB_DIR``, else the experiment directory), ``run_id`` + ``resume`` (``"allow"``/``"must"``: continue
    that run; server only),
    ``init_timeout`` (seconds ``wandb.init`` may wait for the server), ``settings`` (more ``wandb.Settings``).
    Shared run: ``run`` (a ``wandb`` Run, or ``"current"`` for ``wandb.run``); it is never finished here.
    ``log_images``/``max_images``: the per-prompt comparisons (at most ``max_images``) and the progress grid.
    ``log_checkpoints``: upload each new best checkpoint as a ``model`` artifact with aliases ``best`` and
    ``step-N`` (W&B moves ``best`` to the newest version on the server); off by default: the summary points at
    the file instead. ``artifact_name``: default ``model-<run id>`` (Lightning's W&B logger's name).
    ``training_run``: the training run's id, stored as ``bestckpt/training_run_id`` in the own run's config.
    """

    def __init__(
        self,
        *,
        run: Any = None,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = "bestckpt-evaluation",
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,  # noqa: A002 - wandb.init's own name
        run_id: str | None = None,
        resume: str | bool | None = None,
        init_timeout: float = 30.0,
        settings: Mapping[str, Any] | None = None,
        log_images: bool = True,
        max_images: int = 16,
        log_checkpoints: bool = False,
        artifact_name: str | None = None,
        training_run: str | None = None,
        experiment_dir: str | Path | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("the W&B sink needs the 'wandb' package: pip install 'bestckpt[wandb]' "
                              f"(or drop 'wandb' from the sinks). Import error: {exc}") from exc
        self._wandb = wandb
        if run is not None and (run_id is not None or resume is not None):
            raise ValueError("give either run= (log into a run this process already started) or run_id=/resume= "
                             "(start a run that continues run_id), not both")
        self._given_run = run
        if training_run:  # the link of a run of its own to the training run (a sidecar: --sink-option)
            config = {**dict(config or {}), "bestckpt/training_run_id": str(training_run)}
        # default folder: the experiment's (offline runs then sit next to the checkpoints), unless WANDB_DIR says
        base_dir = dir if dir is not None else (None if os.environ.get("WANDB_DIR") else experiment_dir)
        self._init = {k: v for k, v in dict(
            project=project, entity=entity, name=name, group=group, job_type=job_type,
            tags=list(tags) if tags else None, notes=notes, config=dict(config) if config else None, mode=mode,
            dir=str(base_dir) if base_dir is not None else None, id=run_id, resume=resume).items() if v is not None}
        # the sink's run must not capture the process's console or replace the user's wandb.run
        self._settings = {"console": "off", "silent": True, "init_timeout": float(init_timeout),
                          **dict(settings or {})}
        self.log_images = bool(log_images)
        self.max_images = max(0, int(max_images))
        self.log_checkpoints = bool(log_checkpoints)
        self.artifact_name = artifact_name
        self.run: Any = None
        self.shared = run is not None
        self._start_error: str | None = None
        self._pending: deque[dict[str, Any]] = deque()  # shared run: rows waiting for the training's next log
        self._merged_at: int | None = None  # shared run: W&B step our last row was merged into
        self._closed = False
        self._exit_code = 0  # set by finish: 1 when steps were left pending

    # ------------------------------------------------------------------ the run
    def _ensure_run(self) -> Any:
        if self.run is not None:
            return self.run
        if self._closed:
            raise RuntimeError("the W&B sink is closed")
        if self._start_error is not None:  # one wait for the server per run, not one per call
            raise RuntimeError(f"the W&B run could not be started earlier: {self._start_error}")
        wandb = self._wandb
        try:
            if self.shared:
                run = wandb.run if self._given_run == "current" else self._given_run
                born = getattr(run, "_init_pid", None)  # a Run pickled into another process attaches to it
                if born is not None and born != os.getpid():
                    raise ValueError(
                        f"run=: the W&B run {getattr(run, 'id', '?')} was started in process {born}, not in this one "
                        f"(pid {os.getpid()}): a W&B run has one writer. In a background worker use a run of its "
                        "own: sinks={'wandb': linked_settings(run)}")
                if run is None or isinstance(run, str):
                    raise ValueError(
                        f"run={self._given_run!r}: no W&B run is active in this process (pid {os.getpid()}). "
                        "Logging into the training run works where the evaluation is recorded in the training "
                        "process (mode='inline'); a background worker or a sidecar has no training run: leave "
                        "run unset for a run of its own (linked_settings(run) groups it with the training run)")
            else:
                run = wandb.init(**self._init, reinit="create_new", settings=wandb.Settings(**self._settings))
            # every Evaluation/* metric is drawn against the checkpoint's training step, not W&B's step
            run.define_metric(STEP_METRIC, hidden=True)
            run.define_metric("Evaluation/*", step_metric=STEP_METRIC)
        except Exception as exc:
            self._start_error = f"{type(exc).__name__}: {exc}"
            raise
        self.run = run
        logger.info("W&B: logging evaluations into run %s (%s)", getattr(run, "id", "?"),
                    "the training run" if self.shared else "a run of its own")
        return run

    def _write(self, row: dict[str, Any]) -> None:
        if not self.shared:
            self.run.log(row)  # the only writer: W&B's step is ours; the x-axis is Evaluation/step anyway
            return
        if self._pending and self._pending[-1][STEP_METRIC] == row[STEP_METRIC]:
            self._pending[-1] = row  # a retried call: replace, never log one evaluation twice
        else:
            self._pending.append(row)
        self._drain_shared(final=False)

    def _drain_shared(self, *, final: bool) -> None:
        """Merge waiting rows into the training's open row, one per W&B step.

        ``final`` (the training has stopped logging): write all that waits, each row committed as its own
        W&B step (the open row that holds our previous row is committed first, so nothing is overwritten)."""
        while self._pending:
            step = int(self.run.step)
            if step == self._merged_at:
                if not final:
                    return  # the open row already holds one evaluation: wait for the training to log again
                self.run.log({}, commit=True)  # close that row; W&B moves to the next step
                self._merged_at = None
                if int(self.run.step) == step:
                    raise RuntimeError(f"W&B did not advance past step {step}; {len(self._pending)} rows not written")
                continue
            self.run.log(self._pending[0], commit=final)
            self._pending.popleft()
            self._merged_at = None if final else step

    # ------------------------------------------------------------------ the Sink protocol
    def log_evaluation(self, event: EvaluationEvent) -> None:
        """One evaluation: its scalars (``Evaluation/step`` = the checkpoint's training step) and images.

        A failed evaluation logs no score (no made-up values): its error goes to the summary's
        ``bestckpt/failed`` instead."""
        run = self._ensure_run()
        if self.shared:
            self._drain_shared(final=False)
        if not event.ok:
            failed = dict(run.summary.get("bestckpt/failed") or {})
            failed[str(int(event.step))] = str(event.error)
            run.summary["bestckpt/failed"] = failed
            return
        row = evaluation_row(event)
        if self.log_images:
            row.update(self._images(event.images))
        self._write(row)

    def _images(self, images: Sequence[tuple[Path, str]]) -> dict[str, Any]:
        wandb = self._wandb
        grid = [(p, c) for p, c in images if Path(p).name == _GRID_FILE]
        pictures = [(p, c) for p, c in images if Path(p).name != _GRID_FILE][: self.max_images]
        out: dict[str, Any] = {}
        if pictures:
            out[COMPARISONS_KEY] = [wandb.Image(str(p), caption=c) for p, c in pictures]
        if grid:
            out[GRID_KEY] = wandb.Image(str(grid[-1][0]), caption=grid[-1][1])
        return out

    def log_best(self, step: int, path: str, scores: Mapping[str, float | None]) -> None:
        """The best checkpoint as a pointer in the run summary; uploaded only with ``log_checkpoints``."""
        run = self._ensure_run()
        if self.shared:
            self._drain_shared(final=False)
        kept = {k: v for k, v in ((k, _finite(v)) for k, v in scores.items()) if v is not None}
        run.summary[BEST_KEY] = {"step": int(step), "path": str(path), "scores": kept}
        if self.log_checkpoints:
            self._upload(run, int(step), Path(path), kept)

    def _upload(self, run: Any, step: int, path: Path, scores: Mapping[str, float]) -> None:
        if not path.exists():
            logger.warning("W&B: best checkpoint %s is gone; not uploading it (the summary still points at it)",
                           path)
            return
        artifact = self._wandb.Artifact(self.artifact_name or f"model-{run.id}", type="model",
                                        metadata={"step": step, "path": str(path), "scores": dict(scores)})
        if path.is_dir():  # checkpoint-N folders, DeepSpeed tags
            artifact.add_dir(str(path), name=path.name)
        else:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact, aliases=["best", f"step-{step}"])

    def finish(self, summary: Mapping[str, Any], results_file: Path | None) -> None:
        """The run's summary block (ranking head, counts, ``pending``, ``results`` attached after scoring such as
        the demo's accuracy) in the run summary under ``bestckpt``; the results JSON as a run file. With steps still
        pending, the own run will be finished with exit code 1 (see :meth:`close`)."""
        run = self._ensure_run()
        if self.shared:
            self._drain_shared(final=True)
        block = dict(summary)
        if "ranking" in block:  # the head only: a W&B summary is not the place for a long run's every record
            block["ranking"] = list(block["ranking"] or [])[:10]
        run.summary["bestckpt"] = block
        # steps left pending (training stopped without waiting): the own run ends with exit code 1 (W&B shows it
        # "failed": its evaluation did not complete), the steps named in the summary; the scores are all real
        self._exit_code = 1 if block.get("pending") else 0
        if results_file is not None and Path(results_file).is_file():
            run.save(str(results_file), base_path=str(Path(results_file).parent), policy="now")

    def close(self) -> None:
        """Write what waits, finish the sink's own run (never the training's): exit code 1 when :meth:`finish`
        saw steps still pending (W&B shows the run "failed"), else 0; idempotent."""
        if self._closed:
            return
        self._closed = True
        run, self.run = self.run, None
        if run is None:
            return
        if self.shared:
            if self._pending:
                self.run = run
                try:
                    self._drain_shared(final=True)
                finally:
                    self.run = None
            return
        run.finish(exit_code=self._exit_code)
