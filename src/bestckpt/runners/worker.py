"""The background evaluator's process body (:func:`background_main`).

:class:`~bestckpt.runners.background.BackgroundRunner` starts it with the ``spawn`` method, so it
must stay a module-level function at this stable import path, and everything it receives (the
queues and a spec dict of plain values, the tracker config and the protocol) must pickle.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from typing import TYPE_CHECKING, Any

from bestckpt.runners.evaluator import Evaluator
from bestckpt.runners.records import status_of
from bestckpt.sinks.base import SinkSpec

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.tracker import BestCheckpointTracker

    #: ``(step, checkpoint path, epoch)``, or None to stop the worker
    Job = tuple[int, str, int | None] | None

__all__ = ["background_main"]

logger = logging.getLogger(__name__)


def _tracker_from_config(config: TrackerConfig) -> BestCheckpointTracker:
    """The worker's tracker: the directory's stored settings win (another process may have reconfigured
    it since the trainer pickled ``config``); the trainer's fill in what the directory does not store."""
    from bestckpt.tracking.settings import not_stored
    from bestckpt.tracking.tracker import BestCheckpointTracker

    return BestCheckpointTracker(config.checkpoint_dir, dry_run=config.dry_run, **not_stored(config))


def _configure_worker_logging(log_file: str | None, level: int, *, only_if_unconfigured: bool) -> None:
    """A spawned worker starts with no logging: send its records (the guide's log lines) somewhere."""
    import sys

    root = logging.getLogger()
    if only_if_unconfigured and root.handlers:
        return  # the sampler factory configured logging itself
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [bestckpt-eval] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def background_main(jobs: Queue[Job], results: Queue[dict[str, Any]], spec: dict[str, Any]) -> None:
    """Worker process: evaluate queued checkpoints and record them under the tracker's lock.

    ``jobs`` yields ``(step, path, epoch)`` tuples (``None`` means stop); one result dict per job
    goes to ``results``. Exits when the training process is gone (pending stays pending).
    """
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from bestckpt.evaluation.sampler import load_factory, load_sampler

    parent = mp.parent_process()
    if spec.get("log_file"):
        _configure_worker_logging(spec["log_file"], spec["log_level"], only_if_unconfigured=False)
    tracker = _tracker_from_config(spec["tracker_config"])
    setup_error = None
    evaluator: Evaluator | None = None
    try:
        scorer = load_factory(spec["scorer"]) if spec.get("scorer") else None
        evaluator = Evaluator(spec["protocol"], load_sampler(spec["sampler"]), scorer=scorer, device=spec["device"],
                              samples_dir=spec["samples_dir"], tensorboard_dir=spec["tensorboard_dir"],
                              weights_dir=spec["weights_dir"], cache_dir=spec["cache_dir"], dist=None,
                              batch_size=spec["batch_size"], sinks=SinkSpec.from_dict(spec.get("sinks") or {}))
    except Exception as exc:  # every job will fail the same way: record it, do not die silently
        logger.exception("background evaluator could not start")
        setup_error = f"background evaluator setup failed: {type(exc).__name__}: {exc}"
    if not spec.get("log_file"):
        _configure_worker_logging(None, spec["log_level"], only_if_unconfigured=True)
    try:
        while True:
            try:
                job = jobs.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    logger.warning("training process is gone; background evaluator exits (pending stays pending)")
                    return
                continue
            if job is None:  # training closed the runner and waited: the run is over for the sinks
                if evaluator is not None:
                    evaluator.finish(tracker)
                return
            step, path, epoch = job
            if status_of(tracker, step) not in (None, "pending"):
                results.put({"step": step, "skipped": True})
                continue
            if evaluator is None:
                try:
                    tracker.record_failure(step, str(setup_error), epoch=epoch, checkpoint_path=path,
                                           protocol_hash=spec["protocol"].hash)
                except Exception:
                    logger.exception("could not record the failure of step %d", step)
                results.put({"step": step, "ok": False, "scores": {}, "error": setup_error, "duration": 0.0})
                continue
            result = evaluator.evaluate_and_record(tracker, step, path, epoch)
            results.put({"step": step, "ok": result.ok, "scores": dict(result.scores), "error": result.error,
                         "duration": result.duration})
    finally:
        if evaluator is not None:
            evaluator.close()
