"""The background evaluator's process body (:func:`background_main`).

:class:`~bestckpt.runners.background.BackgroundRunner` starts it with the ``spawn`` method, so it
must stay a module-level function at this stable import path, and everything it receives (the
queues and a spec dict of plain values, the tracker config and the protocol) must pickle.

However the run ends, the worker finishes its sinks (``Evaluator.finish``: the summary, the results file, the
end of a run bestckpt created) before it exits:

- ``None`` on the job queue (``close(wait=True)``): after the queued evaluations;
- SIGTERM (``close(wait=False)``, a timed-out ``close(wait=True)``, multiprocessing ending a daemon child at
  training's exit): at once. The handler raises :class:`_StopNow`, a ``BaseException``, so the evaluation in
  flight is abandoned, not recorded as failed: its step stays ``pending`` (never a made-up score). Recording a
  finished evaluation is not interrupted (the stop waits for it);
- the training process gone: after the queued evaluations.

Without any sink there is nothing to finish, and SIGTERM keeps its default action (the worker ends at once).
Once told to stop, the worker gives itself :data:`FINISH_TIMEOUT` seconds (``SIGALRM``, whose default action
ends the process): a sink whose service hangs never keeps it, or training's exit, waiting longer. SIGINT is
ignored: a Ctrl-C in the terminal reaches every process of the group, and training decides what happens.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bestckpt.runners.evaluator import Evaluator
from bestckpt.runners.records import status_of
from bestckpt.sinks.base import SinkSpec

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from bestckpt.evaluation.evaluate import EvaluationResult
    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.tracker import BestCheckpointTracker

    #: ``(step, checkpoint path, epoch)``, or None to stop the worker
    Job = tuple[int, str, int | None] | None

__all__ = ["background_main"]

logger = logging.getLogger(__name__)

#: seconds a worker told to stop (SIGTERM, or training gone) may take to finish its sinks before SIGALRM ends it
FINISH_TIMEOUT = 30


class _StopNow(BaseException):
    """Training asked the worker to stop now (SIGTERM). Not an ``Exception``: the evaluator's failure handling
    must not catch it, so the evaluation in flight stays pending instead of being recorded as failed."""


class _Stop:
    """The worker's signal policy: SIGTERM raises :class:`_StopNow` (deferred while a result is being recorded,
    ignored once finishing); the first request arms the :data:`FINISH_TIMEOUT` alarm; SIGINT is ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._deferring = False
        self._finishing = False
        self._armed = False
        self._raised = False

    def install(self, *, graceful: bool) -> None:
        """``graceful`` (there are sinks to finish): SIGTERM stops through :class:`_StopNow`; else it keeps its
        default action (the process ends at once, even inside native code: nothing would be finished)."""
        if graceful:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def arm(self) -> None:
        """Bound what is left of this process's life to :data:`FINISH_TIMEOUT` seconds (once)."""
        if not self._armed:
            self._armed = True
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(FINISH_TIMEOUT)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.arm()
        if not (self._deferring or self._finishing or self._raised):
            self._raised = True  # once: a second SIGTERM must not cut the finish short
            raise _StopNow

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A SIGTERM arriving inside waits until the end (the caller checks :attr:`requested` afterwards)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def finishing(self) -> None:
        """From now on SIGTERM only arms the alarm: the sinks are being finished."""
        self._finishing = True


class _WorkerEvaluator(Evaluator):
    """The worker's :class:`Evaluator`: recording a result (tracker + sinks) is never cut short by a stop."""

    def __init__(self, *args: Any, stop: _Stop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = stop

    def record(self, tracker: BestCheckpointTracker, result: EvaluationResult, *, path: Any,
               epoch: int | None = None) -> bool:
        with self._stop.deferred():
            return super().record(tracker, result, path=path, epoch=epoch)


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


def _build_evaluator(spec: dict[str, Any], stop: _Stop) -> tuple[Evaluator | None, str | None]:
    """The worker's evaluator, or None and the reason it could not be built (every job then fails with it)."""
    from bestckpt.evaluation.sampler import load_factory, load_sampler

    try:
        scorer = load_factory(spec["scorer"]) if spec.get("scorer") else None
        evaluator = _WorkerEvaluator(
            spec["protocol"], load_sampler(spec["sampler"]), scorer=scorer, device=spec["device"],
            samples_dir=spec["samples_dir"], tensorboard_dir=spec["tensorboard_dir"], weights_dir=spec["weights_dir"],
            cache_dir=spec["cache_dir"], dist=None, batch_size=spec["batch_size"],
            sinks=SinkSpec.from_dict(spec.get("sinks") or {}), stop=stop)
    except Exception as exc:  # every job will fail the same way: record it, do not die silently
        logger.exception("background evaluator could not start")
        return None, f"background evaluator setup failed: {type(exc).__name__}: {exc}"
    return evaluator, None


def background_main(jobs: Queue[Job], results: Queue[dict[str, Any]], spec: dict[str, Any]) -> None:
    """Worker process: evaluate queued checkpoints and record them under the tracker's lock.

    ``jobs`` yields ``(step, path, epoch)`` tuples (``None`` means stop); one result dict per job
    goes to ``results``. SIGTERM stops it at once (the evaluation in flight stays pending); it also exits
    when the training process is gone. Either way the sinks are finished first (see the module docstring).
    """
    stop = _Stop()
    # before anything slow: a SIGTERM from now on ends the worker through its finish
    stop.install(graceful=bool(SinkSpec.from_dict(spec.get("sinks") or {})) or bool(spec.get("tensorboard_dir")))
    try:
        _serve(jobs, results, spec, stop)
    except _StopNow:  # arrived before the evaluator existed: nothing to finish
        pass


def _serve(jobs: Queue[Job], results: Queue[dict[str, Any]], spec: dict[str, Any], stop: _Stop) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec.get("log_file"):
        _configure_worker_logging(spec["log_file"], spec["log_level"], only_if_unconfigured=False)
    evaluator: Evaluator | None = None
    tracker = _tracker_from_config(spec["tracker_config"])
    try:
        evaluator, setup_error = _build_evaluator(spec, stop)
        if not spec.get("log_file"):
            _configure_worker_logging(None, spec["log_level"], only_if_unconfigured=True)
        _work(jobs, results, spec, tracker, evaluator, setup_error, stop)
    except _StopNow:
        logger.warning("training asked the background evaluator to stop now; steps %s stay pending (finish them "
                       "with `bestckpt evaluate` or `bestckpt watch`)", tracker.pending_steps())
    finally:
        stop.finishing()
        if evaluator is not None:
            evaluator.finish(tracker)  # the run is over for the sinks, however it ended
            evaluator.close()


def _work(jobs: Queue[Job], results: Queue[dict[str, Any]], spec: dict[str, Any], tracker: BestCheckpointTracker,
          evaluator: Evaluator | None, setup_error: str | None, stop: _Stop) -> None:
    """Evaluate jobs until ``None`` arrives or the training process is gone."""
    parent = mp.parent_process()
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                logger.warning("training process is gone; background evaluator exits (pending stays pending)")
                stop.arm()
                return
            continue
        if job is None:  # training closed the runner and waited: the run is over for the sinks
            return
        step, path, epoch = job
        if status_of(tracker, step) not in (None, "pending"):
            results.put({"step": step, "skipped": True})
        elif evaluator is None:
            try:
                tracker.record_failure(step, str(setup_error), epoch=epoch, checkpoint_path=path,
                                       protocol_hash=spec["protocol"].hash)
            except Exception:
                logger.exception("could not record the failure of step %d", step)
            results.put({"step": step, "ok": False, "scores": {}, "error": setup_error, "duration": 0.0})
        else:
            result = evaluator.evaluate_and_record(tracker, step, path, epoch)
            results.put({"step": step, "ok": result.ok, "scores": dict(result.scores), "error": result.error,
                         "duration": result.duration})
        if stop.requested:  # a SIGTERM arrived while the result was being recorded
            raise _StopNow
