"""Evaluate in a worker process: :class:`BackgroundRunner` (the training side of the hand-off).

Training queues "checkpoint N saved" and returns at once; the worker
(:func:`~bestckpt.runners.worker.background_main`) scores it and records it through its own tracker.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from bestckpt.runners.evaluator import default_device
from bestckpt.runners.protocol_change import reconcile_protocol
from bestckpt.runners.records import record_of, record_path
from bestckpt.runners.schedule import EvalSchedule
from bestckpt.runners.worker import FINISH_TIMEOUT, background_main
from bestckpt.sinks.base import SinkSpec

__all__ = ["BackgroundRunner"]

logger = logging.getLogger(__name__)


class BackgroundRunner:
    """Hand each scheduled checkpoint to a worker process; :meth:`checkpoint_saved` returns at once.

    The worker is started with the ``spawn`` method (safe with CUDA and threads) and builds its own
    sampler from ``sampler_spec`` ("module:factory"), scorer and tracker (same directory and
    config; every tracker call reloads state under the file lock). Only the global writer rank
    should create a BackgroundRunner. ``sinks`` (a :class:`~bestckpt.sinks.base.SinkSpec` or its short
    forms) are opened and written by the worker, which also calls their ``finish`` however the run ends
    (:meth:`close` with or without waiting, training gone). ``scorer_spec`` ("module:factory") replaces the
    protocol's default :class:`~bestckpt.evaluation.scorer.Scorer` with a custom one. The worker logs (the
    guide's lines included) at ``log_level`` to ``log_file`` when given, else to stderr (unless the
    sampler factory set up logging itself). The worker is a daemon process (stopped with training; it
    finishes its sinks within :data:`~bestckpt.runners.worker.FINISH_TIMEOUT` seconds), so a sampler must not
    start child processes of its own (use DataLoader ``num_workers=0`` inside it). Checkpoints queued but not
    yet scored stay ``pending`` in the tracker, so pruning keeps them and ``bestckpt watch``/``evaluate`` can
    finish them after a crash.
    """

    def __init__(
        self,
        tracker: Any,
        protocol: Any,
        sampler_spec: str,
        *,
        schedule: EvalSchedule | None = None,
        device: str | None = None,
        samples_dir: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        weights_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 16,
        worker_threads: int | None = 1,
        scorer_spec: str | None = None,
        on_protocol_change: str = "refuse",
        log_file: str | Path | None = None,
        log_level: int = logging.INFO,
        sinks: Any = None,
    ) -> None:
        from bestckpt.evaluation.sampler import SamplerError

        if not isinstance(sampler_spec, str) or ":" not in sampler_spec:
            raise SamplerError(
                f"BackgroundRunner needs the sampler as a 'module:factory' string (it is rebuilt in the worker "
                f"process), got {sampler_spec!r}"
            )
        self.tracker = tracker
        self.schedule = schedule or EvalSchedule()
        self._count = 0
        self._spec = {
            "tracker_config": tracker.config, "protocol": protocol, "sampler": sampler_spec,
            "device": default_device() if device is None else str(device),
            "samples_dir": None if samples_dir is None else str(samples_dir),
            "tensorboard_dir": None if tensorboard_dir is None else str(tensorboard_dir),
            "weights_dir": None if weights_dir is None else str(weights_dir),
            "cache_dir": None if cache_dir is None else str(cache_dir),
            "batch_size": batch_size, "threads": worker_threads, "scorer": scorer_spec,
            "log_file": None if log_file is None else str(log_file),
            "log_level": log_level,
            "sinks": SinkSpec.coerce(sinks).to_dict(),
        }
        self._ctx = mp.get_context("spawn")
        self._jobs: Any = self._ctx.Queue()
        self._results: Any = self._ctx.Queue()
        self._proc: Any = None
        self.completed: list[dict[str, Any]] = []
        self._outstanding: set[int] = set()  # steps queued whose result has not arrived (wait())
        self._closed = False
        stale = reconcile_protocol(tracker, protocol, on_protocol_change) if self.schedule.enabled else []
        if stale:
            self._ensure_worker()
            for rec in self.tracker.records:
                if rec.step in stale:
                    self._queue(rec)

    def _queue(self, rec: Any) -> None:
        """Queue the tracker record ``rec``'s checkpoint for the worker."""
        self._jobs.put((rec.step, str(record_path(self.tracker, rec)), rec.epoch))
        self._outstanding.add(rec.step)

    def _ensure_worker(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        if self._proc is not None:
            logger.error("background evaluator died (exit code %s); starting a new one", self._proc.exitcode)
            # jobs the dead worker had taken are still pending in the tracker: queue them again
            for step in self.tracker.pending_steps():
                rec = record_of(self.tracker, step)
                if rec is not None:
                    self._queue(rec)
        self._proc = self._ctx.Process(target=background_main, args=(self._jobs, self._results, self._spec),
                                       name="bestckpt-eval", daemon=True)
        self._proc.start()

    def checkpoint_saved(self, step: int, path: str | Path, epoch: int | None = None) -> bool:
        """Register the committed checkpoint and queue it for evaluation; returns whether it was queued."""
        if self._closed:
            raise RuntimeError("BackgroundRunner is closed")
        self._count += 1
        evaluate = self.schedule.should_evaluate(step, self._count)
        self.tracker.checkpoint_saved(step, str(path), epoch=epoch, evaluate=evaluate)
        if evaluate:
            self._ensure_worker()
            self._jobs.put((step, str(path), epoch))
            self._outstanding.add(step)
        self.poll()
        return evaluate

    def resume_pending(self, only: Collection[int] | None = None) -> list[int]:
        """Queue every checkpoint the tracker still has pending (e.g. left by an interrupted run), or only
        those of the steps in ``only``; returns the queued steps."""
        steps = []
        for rec in self.tracker.records:
            if rec.status == "pending" and not rec.pruned and (only is None or rec.step in only):
                self._ensure_worker()
                self._queue(rec)
                steps.append(rec.step)
        return steps

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (then nothing more is queued or polled)."""
        return self._closed

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Results that arrived since the last call; with ``timeout > 0``, first waits up to that many
        seconds for one to arrive (default: non-blocking)."""
        new = []
        if timeout > 0 and not self._closed:
            try:
                new.append(self._results.get(timeout=timeout))
            except queue.Empty:
                pass
        while True:
            try:
                new.append(self._results.get_nowait())
            except queue.Empty:
                break
        self.completed.extend(new)
        self._outstanding.difference_update(r["step"] for r in new)
        return new

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every queued evaluation has its result (the worker keeps running: more checkpoints may
        come); at most ``timeout`` seconds. Returns whether all arrived (False: timed out or the worker died,
        and what is left stays pending). Use it to act on the final best before :meth:`close`."""
        end = None if timeout is None else time.monotonic() + float(timeout)
        while self._outstanding and not self._closed:
            if self._proc is None or not self._proc.is_alive():
                self.poll()
                if self._outstanding:
                    logger.error("background evaluator is not running (exit code %s); steps %s stay pending",
                                 None if self._proc is None else self._proc.exitcode, sorted(self._outstanding))
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            self.poll(timeout=1.0 if left is None else min(1.0, left))
        return not self._outstanding

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the worker; either way its sinks are finished (summary, results file, the end of their run).

        ``wait=True`` lets the worker evaluate what is queued first (at most ``timeout`` seconds, when given).
        ``wait=False`` (Ctrl-C, a crash), or a ``timeout`` that ran out, stops it now: the evaluation in flight
        is abandoned and, like the queued ones, stays ``pending`` (never failed, never a made-up score). The
        worker then has :data:`~bestckpt.runners.worker.FINISH_TIMEOUT` seconds to finish its sinks; training
        waits that long at most (plus a margin), then kills it."""
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            return
        if wait:
            self._jobs.put(None)
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._stop_worker()
        elif self._proc.exitcode:
            logger.error("background evaluator exited with code %s", self._proc.exitcode)
        self.poll()
        left = self.tracker.pending_steps()
        if left:
            logger.warning("steps %s are still pending evaluation (protected from pruning); finish them with "
                           "`bestckpt evaluate` or `bestckpt watch`", left)
        self._jobs.close()
        self._results.close()

    def _stop_worker(self) -> None:
        """SIGTERM: the worker abandons its evaluation and finishes its sinks (bounded by its own alarm); a
        worker that has not exited by then (stuck in native code) is killed."""
        self._proc.terminate()
        self._proc.join(FINISH_TIMEOUT + 5)
        if self._proc.is_alive():
            logger.error("background evaluator did not stop within %d s; killing it (its sinks may not have "
                         "received the end of the run: `bestckpt export` replays it)", FINISH_TIMEOUT + 5)
            self._proc.kill()
            self._proc.join(5)

    def __enter__(self) -> BackgroundRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)
