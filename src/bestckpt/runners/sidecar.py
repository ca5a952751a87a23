"""Evaluate a run's checkpoints from another process as they appear: :class:`SidecarWatcher` (``bestckpt watch``).

What is due comes from the tracker's state plus the directory (:func:`~bestckpt.tracking.layout.find_checkpoints`),
so a restarted watcher resumes where a crashed one stopped.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bestckpt.runners.evaluator import Evaluator
from bestckpt.runners.protocol_change import reconcile_protocol
from bestckpt.runners.records import status_of
from bestckpt.tracking.layout import find_checkpoints

__all__ = ["SidecarWatcher"]

logger = logging.getLogger(__name__)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


class SidecarWatcher:
    """Evaluate a run's checkpoints as they appear (``bestckpt watch``), in step order, skipping none.

    What to evaluate comes from the tracker's state plus the directory: every complete checkpoint
    that is ``pending`` in the tracker, or unknown to it (a trainer without a tracker), is
    evaluated once (unknown ones after ``adopt_after`` seconds); ``evaluated``/``failed``/``saved``
    (not scheduled) records are left alone.
    A SIGKILL mid-evaluation leaves that checkpoint pending, so a restarted watcher evaluates it
    again and records it once. SIGINT/SIGTERM stop after the current checkpoint.
    """

    def __init__(self, tracker: Any, evaluator: Evaluator, *, poll_interval: float = 5.0,
                 adopt_after: float | None = 60.0, on_protocol_change: str = "refuse") -> None:
        reconcile_protocol(tracker, evaluator.protocol, on_protocol_change)  # rescore: marks them pending
        self.tracker = tracker
        self.evaluator = evaluator
        self.poll_interval = poll_interval
        # a trainer with a tracker registers its checkpoint right after committing it; re-registering an
        # already evaluated step would reset it to pending, so unknown checkpoints are adopted only once
        # they have stayed unregistered this long (None: never; 0: at once, for trainers without a tracker)
        self.adopt_after = adopt_after
        self._stop = threading.Event()
        self.evaluated: list[int] = []

    def stop(self) -> None:
        self._stop.set()

    def due(self) -> Iterator[tuple[int, Path, int | None]]:
        """Complete checkpoints that still need an evaluation, ascending by step: named by the template, or
        directories whose completion marker records their step (HunyuanDiT's epoch tags, ``docs/layouts.md``);
        no other name is looked at, and no checkpoint is opened to find its step."""
        config = self.tracker.config
        records = {r.step: r for r in self.tracker.records}
        for step, path, complete in find_checkpoints(config.checkpoint_dir, config.step_from_name):
            if not complete:
                continue
            rec = records.get(step)
            if rec is None:
                if self.adopt_after is not None and _age(path) >= self.adopt_after:
                    yield step, path, None
            elif rec.status == "pending":
                yield step, path, rec.epoch

    def run_once(self) -> int:
        """Evaluate everything due now; returns how many checkpoints were evaluated."""
        done = 0
        for step, path, epoch in list(self.due()):
            if self._stop.is_set():
                break
            if status_of(self.tracker, step) is None:
                self.tracker.checkpoint_saved(step, str(path), epoch=epoch, evaluate=True)
            elif status_of(self.tracker, step) != "pending":
                continue  # someone else finished it meanwhile
            self.evaluator.evaluate_and_record(self.tracker, step, path, epoch)
            self.evaluated.append(step)
            done += 1
        return done

    def run(self, *, once: bool = False, idle_timeout: float | None = None,
            on_ready: Callable[[], None] | None = None) -> int:
        """Watch until stopped (SIGINT/SIGTERM, :meth:`stop`), or until idle for ``idle_timeout`` seconds.
        ``on_ready`` is called once the signal handlers are in place (a "watching" line printed earlier
        could be answered by a signal that still kills the process)."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        if on_ready is not None:
            on_ready()
        total = 0
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                n = self.run_once()
                total += n
                if once:
                    break
                if n:
                    idle_since = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    logger.info("no new checkpoint for %.0fs; stopping", idle_timeout)
                    break
                self._stop.wait(self.poll_interval)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.evaluator.finish(self.tracker)  # the sinks get the summary (a no-op without sinks)
            self.evaluator.close()
        return total

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():  # second signal: stop now
            raise KeyboardInterrupt
        logger.info("received %s: stopping after the current checkpoint", signal.Signals(signum).name)
        self._stop.set()
