"""Where evaluation runs: inline (all ranks), a background worker process, or a sidecar watcher.

All three call the same :func:`~bestckpt.evaluation.evaluate.evaluate_checkpoint` on a committed
checkpoint and record through the tracker, so their scores are interchangeable:

* :class:`InlineRunner` evaluates inside the training processes; every rank takes part.
* :class:`BackgroundRunner` hands "checkpoint N saved" to a worker *process* and returns at once;
  the checkpoint stays pending (protected from pruning) until the worker records its score.
* :class:`SidecarWatcher` (``bestckpt watch``) evaluates complete checkpoints as they appear, in
  step order, skipping none; it resumes from the tracker's state after any crash.

Training never fails because evaluation failed: the failure is logged and recorded with
``tracker.record_failure`` (a failed record can never become best).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETE_MARKER",
    "BackgroundRunner",
    "EvalSchedule",
    "Evaluator",
    "InlineRunner",
    "ON_PROTOCOL_CHANGE",
    "ProtocolChangedError",
    "SidecarWatcher",
    "build_scorer",
    "default_device",
    "find_checkpoints",
    "is_checkpoint_complete",
    "read_latest_tag",
    "reconcile_protocol",
]

logger = logging.getLogger(__name__)

#: a file inside a checkpoint directory that says "this checkpoint is completely written"
COMPLETE_MARKER = ".bestckpt-complete"


# --------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class EvalSchedule:
    """Which saved checkpoints are evaluated.

    The guide's default: every 2nd checkpoint. With ``checkpoint_every_steps`` the rule is the
    guide's stateless ``step % (checkpoint_every_steps * every_n_checkpoints) == 0`` (the same after
    a resume); without it, the runner counts the checkpoints it was told about (1-based) and
    evaluates every ``every_n_checkpoints``-th. ``enabled=False`` turns evaluation off entirely.
    """

    every_n_checkpoints: int = 2
    enabled: bool = True
    checkpoint_every_steps: int | None = None

    def __post_init__(self) -> None:
        n = self.every_n_checkpoints
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"every_n_checkpoints must be an integer >= 1 (1 = every checkpoint), got {n!r}")
        c = self.checkpoint_every_steps
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"checkpoint_every_steps must be None or an integer >= 1, got {c!r}")

    @classmethod
    def off(cls) -> EvalSchedule:
        return cls(enabled=False)

    def should_evaluate(self, step: int, checkpoint_index: int | None = None) -> bool:
        """True when checkpoint ``step`` (the ``checkpoint_index``-th of this run, 1-based) is evaluated."""
        if not self.enabled:
            return False
        if self.checkpoint_every_steps is not None:
            return step % (self.checkpoint_every_steps * self.every_n_checkpoints) == 0
        if checkpoint_index is None:
            raise ValueError("checkpoint_index is needed when checkpoint_every_steps is not set")
        return checkpoint_index % self.every_n_checkpoints == 0


# --------------------------------------------------------------------------- completeness
def read_latest_tag(checkpoint_dir: str | Path) -> str | None:
    """The tag named by DeepSpeed's ``checkpoint_dir/latest`` text file, or None."""
    latest = Path(checkpoint_dir) / "latest"
    try:
        text = latest.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None
    return text or None


def is_checkpoint_complete(path: str | Path, *, later_exists: bool, latest_tag: str | None = None) -> bool:
    """Whether a checkpoint is completely on disk and safe to evaluate.

    A file is complete once it has its final name (trainers must write to a temporary name and
    rename, as ``torch.save`` + ``os.replace`` does). A directory (DeepSpeed tag) is complete when
    it holds the ``.bestckpt-complete`` marker, when DeepSpeed's ``latest`` names it, or when a
    later tag exists (DeepSpeed saves tags one after another, with a barrier at the end of each).
    ``latest`` alone is weak (DeepSpeed writes it before its final barrier), so trainers that can
    should write the marker on rank 0 after ``save_checkpoint`` returns.
    """
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    if (path / COMPLETE_MARKER).exists():
        return True
    if latest_tag is not None and latest_tag == path.name:
        return True
    return later_exists


def find_checkpoints(checkpoint_dir: str | Path, step_from_name: Callable[[str], int | None]) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every step checkpoint in the directory, ascending by step."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        if entry.is_symlink() or entry.name.endswith(".tmp"):
            continue
        step = step_from_name(entry.name)
        if step is not None:
            found.append((step, entry))
    found.sort()
    latest = read_latest_tag(root)
    return [
        (step, path, is_checkpoint_complete(path, later_exists=i < len(found) - 1, latest_tag=latest))
        for i, (step, path) in enumerate(found)
    ]


# --------------------------------------------------------------------------- evaluator
def default_device() -> str:
    """The training device: this process's current CUDA device when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


def build_scorer(protocol: Any, *, device: Any = "cpu", weights_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> Any:
    """The metrics engineer's :class:`~bestckpt.evaluation.scorer.Scorer` configured by the protocol."""
    from bestckpt.evaluation import scorer as scorer_mod

    kwargs: dict[str, Any] = dict(
        metrics=tuple(protocol.metrics), backbones=dict(protocol.backbones), weights_dir=weights_dir,
        device=str(device), cache_dir=cache_dir,
    )
    if getattr(protocol, "metric_options", None):
        kwargs["metric_options"] = {k: dict(v) for k, v in protocol.metric_options.items()}
    if protocol.composite_weights is not None:
        kwargs["composite"] = scorer_mod.CompositeConfig(weights=dict(protocol.composite_weights))
    return scorer_mod.Scorer(**kwargs)


class Evaluator:
    """Protocol + sampler + scorer + sinks: evaluates one checkpoint and records the outcome.

    The scorer and the reference statistics are built on the first evaluation and reused (the
    original reloaded every backbone at every evaluation). ``device`` defaults to the training
    device (:func:`default_device`); pass e.g. ``"cuda:1"`` to evaluate on another GPU. Under ``torch.distributed`` every rank
    must call :meth:`evaluate` for the same checkpoint.
    """

    def __init__(
        self,
        protocol: Any,
        sampler: Any,
        *,
        scorer: Any = None,
        device: Any = None,
        samples_dir: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        weights_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        dist: Any = "auto",
        batch_size: int = 16,
    ) -> None:
        self.protocol = protocol
        self.sampler = sampler
        self.scorer = scorer
        self.device = default_device() if device is None else str(device)
        self.samples_dir = None if samples_dir is None else Path(samples_dir)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self.weights_dir = weights_dir
        self.cache_dir = cache_dir
        self.dist = dist
        self.batch_size = batch_size
        self._reference_stats: Any = None
        self._ready = False
        self._sink: Any = None

    def _ctx(self) -> Any:
        from bestckpt.evaluation.distributed import current_context

        return current_context() if self.dist == "auto" else self.dist

    def _setup(self) -> None:
        from bestckpt.evaluation.evaluate import prepare_reference_statistics

        if self.scorer is None:
            self.scorer = build_scorer(self.protocol, device=self.device, weights_dir=self.weights_dir,
                                       cache_dir=self.cache_dir)
        self._reference_stats = prepare_reference_statistics(self.protocol, self.scorer, cache_dir=self.cache_dir)
        self._ready = True

    def evaluate(self, step: int, path: str | Path) -> Any:
        """:class:`~bestckpt.evaluation.evaluate.EvaluationResult` for ``path``; never raises for a failed evaluation."""
        from bestckpt.evaluation.distributed import agree_on_errors
        from bestckpt.evaluation.evaluate import EvaluationResult, evaluate_checkpoint

        ctx = self._ctx()
        started = time.perf_counter()
        setup_error = None
        if not self._ready:
            try:
                self._setup()
            except Exception as exc:
                logger.exception("could not set up evaluation (scorer / reference statistics)")
                setup_error = f"evaluation setup failed: {type(exc).__name__}: {exc}"
        # every rank learns whether every rank is ready, so none enters the gathers alone
        errors = agree_on_errors(setup_error, ctx)
        if errors:
            return EvaluationResult(step=step, scores={}, protocol_hash=self.protocol.hash, weights="unknown",
                                    duration=time.perf_counter() - started, error="; ".join(errors),
                                    num_samples=self.protocol.num_samples)
        return evaluate_checkpoint(
            path, step, self.protocol, self.sampler, self.scorer, self._reference_stats, device=self.device,
            samples_dir=self.samples_dir, dist=ctx, batch_size=self.batch_size,
        )

    def record(self, tracker: Any, result: Any, *, path: str | Path, epoch: int | None = None) -> bool:
        """Store ``result`` in the tracker (score or failure) and the sinks; True if it is the new best.

        Only the tracker's writer (global rank 0) records; other ranks return False.
        """
        if not getattr(tracker, "is_writer", True):
            return False
        if result.ok:
            is_best = bool(tracker.update_checkpoint(result.step, epoch, str(path), dict(result.scores),
                                                     protocol_hash=result.protocol_hash, info=result.info()))
        else:
            tracker.record_failure(result.step, result.error, epoch=epoch, checkpoint_path=str(path),
                                   protocol_hash=result.protocol_hash)
            is_best = False
        ctx = self._ctx()
        if self.tensorboard_dir is not None and (ctx is None or ctx.rank == 0) and result.ok:
            try:
                if self._sink is None:
                    from bestckpt.sinks.tensorboard import TensorBoardSink

                    self._sink = TensorBoardSink(self.tensorboard_dir, filename_suffix=f".eval{os.getpid()}")
                self._sink.write(result.step, result.scores, is_best=is_best, images=result.preview)
            except Exception:
                logger.exception("could not write TensorBoard scalars for step %d", result.step)
        return is_best

    def evaluate_and_record(self, tracker: Any, step: int, path: str | Path, epoch: int | None = None) -> Any:
        """The runners' unit of work: log, evaluate, record. Never raises for evaluation failures."""
        logger.info("[Step %d] Evaluating model performance at step %d", step, step)
        try:
            result = self.evaluate(step, path)
        except Exception as exc:  # a bug on our side still must not kill training
            from bestckpt.evaluation.evaluate import EvaluationResult

            logger.exception("evaluation of step %d crashed", step)
            result = EvaluationResult(step=step, scores={}, protocol_hash=self.protocol.hash, weights="unknown",
                                      duration=0.0, error=f"{type(exc).__name__}: {exc}")
        try:
            self.record(tracker, result, path=path, epoch=epoch)
        except Exception:  # bookkeeping trouble is logged; the checkpoint stays pending, nothing is lost
            logger.exception("could not record the evaluation of step %d; it stays pending", step)
        if result.ok:
            shown = ", ".join(f"{k}: {v:.4f}" if v is not None else f"{k}: failed" for k, v in result.scores.items())
            logger.info("[Step %d] evaluated in %.1fs (%s weights): %s", step, result.duration, result.weights, shown)
        else:
            logger.error("[Step %d] evaluation failed (recorded, training continues): %s", step, result.error)
        return result

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


# --------------------------------------------------------------------------- protocol changes
class ProtocolChangedError(RuntimeError):
    """The run's checkpoints were scored under another protocol; their scores are not comparable."""


ON_PROTOCOL_CHANGE = ("refuse", "rescore")


def reconcile_protocol(tracker: Any, protocol: Any, on_change: str = "refuse") -> list[int]:
    """Check that every scored checkpoint still on disk was scored under ``protocol``.

    Scores from different protocols are never compared. ``"refuse"`` raises
    :class:`ProtocolChangedError` naming the steps and the ways out; ``"rescore"`` marks those
    checkpoints pending again (protected from pruning) and returns their steps, so the runner
    scores them under the new protocol.
    """
    if on_change not in ON_PROTOCOL_CHANGE:
        raise ValueError(f"on_protocol_change must be one of {ON_PROTOCOL_CHANGE}, got {on_change!r}")
    stale = [r for r in tracker.records
             if not r.pruned and r.status == "evaluated" and r.protocol_hash not in (None, protocol.hash)]
    if not stale:
        return []
    steps = [r.step for r in stale]
    if on_change == "refuse":
        old = sorted({str(r.protocol_hash)[:12] for r in stale})
        raise ProtocolChangedError(
            f"{len(steps)} checkpoint(s) in {tracker.config.checkpoint_dir} (steps {steps[:10]}) were scored under "
            f"protocol(s) {old}, not the current {protocol.hash[:12]}; their scores are not comparable. Use the "
            "earlier protocol, or pass on_protocol_change='rescore' (CLI: --on-protocol-change rescore) to re-score "
            "them, or re-score offline with `bestckpt evaluate DIR --protocol NEW`"
        )
    logger.warning("protocol changed: re-scoring steps %s under protocol %s", steps, protocol.hash[:12])
    for r in stale:
        tracker.checkpoint_saved(r.step, str(Path(tracker.config.checkpoint_dir) / r.path), epoch=r.epoch,
                                 evaluate=True)
    return steps


# --------------------------------------------------------------------------- inline
class InlineRunner:
    """Evaluate inside the training processes; call :meth:`checkpoint_saved` on *every* rank."""

    def __init__(self, tracker: Any, evaluator: Evaluator, schedule: EvalSchedule | None = None, *,
                 on_protocol_change: str = "refuse") -> None:
        self.tracker = tracker
        self.evaluator = evaluator
        self.schedule = schedule or EvalSchedule()
        self._count = 0
        self._rescore: list[int] = []
        if self.schedule.enabled:
            self._rescore = reconcile_protocol(tracker, evaluator.protocol, on_protocol_change)

    def _rescore_stale(self) -> None:
        steps, self._rescore = self._rescore, []
        for step in steps:
            rec = next((r for r in self.tracker.records if r.step == step), None)
            path = Path(self.tracker.config.checkpoint_dir) / (rec.path if rec else self.tracker.config.step_filename(step))
            self.evaluator.evaluate_and_record(self.tracker, step, path, None if rec is None else rec.epoch)

    def checkpoint_saved(self, step: int, path: str | Path, epoch: int | None = None) -> Any:
        """Register the committed checkpoint; evaluate it now if the schedule says so."""
        if self._rescore:
            self._rescore_stale()
        self._count += 1
        evaluate = self.schedule.should_evaluate(step, self._count)
        self.tracker.checkpoint_saved(step, str(path), epoch=epoch, evaluate=evaluate)
        if not evaluate:
            return None
        return self.evaluator.evaluate_and_record(self.tracker, step, path, epoch)

    def close(self, wait: bool = True) -> None:
        self.evaluator.close()


# --------------------------------------------------------------------------- background
def _tracker_from_config(config: Any) -> Any:
    from bestckpt.tracker import BestCheckpointTracker

    return BestCheckpointTracker(config.checkpoint_dir, config=config)


def _status_of(tracker: Any, step: int) -> str | None:
    for rec in tracker.records:
        if rec.step == step:
            return rec.status
    return None


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


def _background_main(jobs: Any, results: Any, spec: dict[str, Any]) -> None:
    """Worker process: evaluate queued checkpoints and record them under the tracker's lock."""
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
                              batch_size=spec["batch_size"])
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
            if job is None:
                return
            step, path, epoch = job
            if _status_of(tracker, step) not in (None, "pending"):
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


class BackgroundRunner:
    """Hand each scheduled checkpoint to a worker process; :meth:`checkpoint_saved` returns at once.

    The worker is started with the ``spawn`` method (safe with CUDA and threads) and builds its own
    sampler from ``sampler_spec`` ("module:factory"), scorer and tracker (same directory and
    config; every tracker call reloads state under the file lock). Only the global writer rank
    should create a BackgroundRunner. ``scorer_spec`` ("module:factory") replaces the protocol's
    default :class:`~bestckpt.evaluation.scorer.Scorer` with a custom one. The worker logs (the
    guide's lines included) at ``log_level`` to ``log_file`` when given, else to stderr (unless the
    sampler factory set up logging itself). The worker is a daemon process (it dies with training
    and never blocks its exit), so a sampler must not start child processes of its own (use
    DataLoader ``num_workers=0`` inside it). Checkpoints queued but not yet scored stay ``pending`` in the
    tracker, so pruning keeps them and ``bestckpt watch``/``evaluate`` can finish them after a crash.
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
        }
        self._ctx = mp.get_context("spawn")
        self._jobs: Any = self._ctx.Queue()
        self._results: Any = self._ctx.Queue()
        self._proc: Any = None
        self.completed: list[dict[str, Any]] = []
        self._closed = False
        stale = reconcile_protocol(tracker, protocol, on_protocol_change) if self.schedule.enabled else []
        if stale:
            self._ensure_worker()
            for rec in self.tracker.records:
                if rec.step in stale:
                    self._jobs.put((rec.step, str(Path(tracker.config.checkpoint_dir) / rec.path), rec.epoch))

    def _ensure_worker(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        if self._proc is not None:
            logger.error("background evaluator died (exit code %s); starting a new one", self._proc.exitcode)
            # jobs the dead worker had taken are still pending in the tracker: queue them again
            for step in self.tracker.pending_steps():
                rec = next((r for r in self.tracker.records if r.step == step), None)
                if rec is not None:
                    path = Path(self.tracker.config.checkpoint_dir) / rec.path
                    self._jobs.put((step, str(path), rec.epoch))
        self._proc = self._ctx.Process(target=_background_main, args=(self._jobs, self._results, self._spec),
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
        self.poll()
        return evaluate

    def resume_pending(self) -> list[int]:
        """Queue every checkpoint the tracker still has pending (e.g. left by an interrupted run)."""
        steps = []
        for rec in self.tracker.records:
            if rec.status == "pending" and not rec.pruned:
                self._ensure_worker()
                self._jobs.put((rec.step, str(Path(self.tracker.config.checkpoint_dir) / rec.path), rec.epoch))
                steps.append(rec.step)
        return steps

    def poll(self) -> list[dict[str, Any]]:
        """Results that arrived since the last call (non-blocking)."""
        new = []
        while True:
            try:
                new.append(self._results.get_nowait())
            except queue.Empty:
                break
        self.completed.extend(new)
        return new

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the worker. ``wait=True`` finishes queued evaluations first; otherwise they stay pending."""
        if self._closed:
            return
        self._closed = True
        if self._proc is None:
            return
        if wait:
            self._jobs.put(None)
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        elif self._proc.exitcode:
            logger.error("background evaluator exited with code %s", self._proc.exitcode)
        self.poll()
        left = self.tracker.pending_steps()
        if left:
            logger.warning("steps %s are still pending evaluation (protected from pruning); finish them with "
                           "`bestckpt evaluate` or `bestckpt watch`", left)
        self._jobs.close()
        self._results.close()

    def __enter__(self) -> BackgroundRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)


# --------------------------------------------------------------------------- sidecar
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
        """Complete checkpoints that still need an evaluation, ascending by step."""
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
            if _status_of(self.tracker, step) is None:
                self.tracker.checkpoint_saved(step, str(path), epoch=epoch, evaluate=True)
            elif _status_of(self.tracker, step) != "pending":
                continue  # someone else finished it meanwhile
            self.evaluator.evaluate_and_record(self.tracker, step, path, epoch)
            self.evaluated.append(step)
            done += 1
        return done

    def run(self, *, once: bool = False, idle_timeout: float | None = None) -> int:
        """Watch until stopped (SIGINT/SIGTERM, :meth:`stop`), or until idle for ``idle_timeout`` seconds."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.evaluator.close()
        return total

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():  # second signal: stop now
            raise KeyboardInterrupt
        logger.info("received %s: stopping after the current checkpoint", signal.Signals(signum).name)
        self._stop.set()
