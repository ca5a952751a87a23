"""PyTorch Lightning: bestckpt as one callback next to a ``ModelCheckpoint`` that keeps every save.

    from lightning.pytorch.callbacks import ModelCheckpoint
    from bestckpt.integrations.lightning import BestCheckpointCallback
    trainer = Trainer(callbacks=[
        ModelCheckpoint(dirpath="runs/exp/checkpoints", filename="{step:07d}", every_n_train_steps=500, save_top_k=-1),
        BestCheckpointCallback(protocol, "my_project.sampling:make_sampler"),
    ])

Lightning saves; bestckpt scores in the background (:class:`~bestckpt.integrations.loop.TrainingEvaluation`,
the demo's pipeline: the guide's log lines, files and TensorBoard tags), ranks, points ``best.pt`` and prunes.

What the callback requires of the trainer's one ``ModelCheckpoint`` (checked in ``setup``, before any step;
a conflicting one is refused with the fix, never reconfigured behind the user's back):

* ``save_top_k=-1`` and ``monitor=None``: Lightning deletes nothing (bestckpt prunes), and Lightning's own
  "best" (``best_model_path``, used by ``ckpt_path="best"``) is the newest save, which bestckpt always keeps;
  when fit ends it is set to bestckpt's best (never deleted), so ``trainer.test(ckpt_path="best")`` loads it.
* names the tracker's ``filename_template`` parses (default ``step={step:07d}.ckpt``, i.e.
  ``ModelCheckpoint(filename="{step:07d}")``).
* ``save_last=True`` (a copy) and ``save_last="link"`` are allowed: ``last.ckpt`` is no step name, so bestckpt
  never touches it, and the link always names the newest save, which retention keeps (``keep_latest >= 1``).

The save is seen at the moment Lightning's loggers get ``after_save_checkpoint``: right after
``Trainer.save_checkpoint`` returned on every rank (it ends with a barrier). With ``AsyncCheckpointIO`` the file
is only written later, in its one-thread executor: the callback queues a marker behind the save in that executor
and registers the checkpoint once the marker has run (checked at every batch end; all waited for when training
ends). Under the DeepSpeed strategy a checkpoint is a directory: it is marked complete
(:func:`~bestckpt.tracking.layout.mark_complete`) and registered as a directory (not run here: it needs a GPU).
A run resumed with ``trainer.fit(ckpt_path=...)`` pins that checkpoint's step (stored with the directory's
settings), so it is never deleted.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bestckpt.errors import ConfigError
from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.layout import mark_complete

__all__ = ["DEFAULT_TEMPLATE", "BestCheckpointCallback", "load_lightning_state_dict"]

logger = logging.getLogger(__name__)

#: the tracker's names for ``ModelCheckpoint(filename="{step:07d}")`` (``step=0000500.ckpt``)
DEFAULT_TEMPLATE = "step={step:07d}.ckpt"
_WRAPPED = "_bestckpt_wrapped"


class BestCheckpointCallback(Callback):
    """Register every checkpoint the trainer's ``ModelCheckpoint`` writes with a :class:`TrainingEvaluation`.

    ``protocol`` and ``sampler`` (a ``"module:factory"`` spec in ``"background"`` mode) and every other keyword
    (``mode``, ``schedule``, ``tensorboard_dir``, ``log_file``, ``save_top_k``, ``keep_every_n_steps``, ...)
    go to :class:`~bestckpt.integrations.loop.TrainingEvaluation`; the checkpoint directory is the
    ``ModelCheckpoint``'s ``dirpath``. ``blocked_s`` lists, per registered checkpoint, the seconds training
    spent in bestckpt for it (the benchmark's measure); ``evaluation`` is the run's TrainingEvaluation (on the
    ranks that own one: global rank 0, every rank in ``"inline"`` mode).
    """

    def __init__(self, protocol: Any, sampler: Any, *, filename_template: str = DEFAULT_TEMPLATE,
                 **evaluation_kwargs: Any) -> None:
        self.protocol = protocol
        self.sampler = sampler
        self.config = TrackerConfig(Path("."), filename_template=filename_template)  # validates the template
        self.kwargs = dict(evaluation_kwargs)
        self.mode = self.kwargs.get("mode", "background")
        self.evaluation: TrainingEvaluation | None = None
        self.blocked_s: list[float] = []
        self.pinned_resume: int | None = None
        self._model_checkpoint: ModelCheckpoint | None = None
        self._waiting: deque[tuple[Any, int, Path, int]] = deque()  # async saves: (marker future, step, path, epoch)
        self._carry = 0.0  # seconds spent in bestckpt since the last checkpoint (polls), added to the next one
        self._warned: set[str] = set()
        self._closed = False

    # ------------------------------------------------------------------ set-up: check ModelCheckpoint, hook its save
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        mc = self._check_model_checkpoint(trainer)
        self._model_checkpoint = mc
        if not hasattr(mc, "_save_checkpoint"):
            raise RuntimeError("this Lightning's ModelCheckpoint has no _save_checkpoint (bestckpt was written "
                               "and tested against lightning 2.6); use lightning 2.6")
        if not getattr(mc._save_checkpoint, _WRAPPED, False):
            original = mc._save_checkpoint

            def save_and_register(trainer: Any, filepath: str) -> None:
                original(trainer, filepath)  # ends with the strategy's barrier: written on every rank
                self._saved(trainer, Path(filepath))

            setattr(save_and_register, _WRAPPED, True)
            mc._save_checkpoint = save_and_register  # type: ignore[method-assign]

    def _check_model_checkpoint(self, trainer: Any) -> ModelCheckpoint:
        found = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        fix = ("ModelCheckpoint(dirpath=..., filename='{step:07d}', every_n_train_steps=N, save_top_k=-1) "
               "in Trainer(callbacks=[...])")
        if len(found) != 1:
            raise ConfigError(f"BestCheckpointCallback needs exactly one ModelCheckpoint, the trainer has "
                              f"{len(found)}; pass one {fix}")
        mc = found[0]
        if mc.save_top_k != -1:
            raise ConfigError(
                f"ModelCheckpoint(save_top_k={mc.save_top_k}) would delete (or never write) checkpoints that "
                f"bestckpt ranks; bestckpt does the pruning: use save_top_k=-1 (and BestCheckpointCallback("
                f"save_top_k=...) for how many to keep), e.g. {fix}")
        if mc.monitor is not None:
            raise ConfigError(
                f"ModelCheckpoint(monitor={mc.monitor!r}) makes Lightning's 'best' (ckpt_path='best') a checkpoint "
                "bestckpt may prune; bestckpt ranks by its own evaluation: leave monitor=None")
        for step, epoch in ((1234, 0), (10, 3)):
            name = Path(mc.format_checkpoint_name({"step": _tensor(step), "epoch": _tensor(epoch)})).name
            if self.config.step_from_name(name) != step:
                raise ConfigError(
                    f"ModelCheckpoint(filename={mc.filename!r}) writes names like {name!r} that filename_template "
                    f"{self.config.filename_template!r} does not parse; use ModelCheckpoint(filename='{{step:07d}}'"
                    f") with the default template, or pass BestCheckpointCallback(filename_template=...) matching it")
        return mc

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if (self.evaluation is not None and not self._closed) or (self.mode != "inline" and not trainer.is_global_zero):
            return  # (a second fit with this callback starts a new TrainingEvaluation)
        mc = self._model_checkpoint
        assert mc is not None and mc.dirpath is not None
        ckpt_dir = Path(mc.dirpath)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(self.kwargs, filename_template=self.config.filename_template)
        kwargs.update(self._resume_pin(trainer, ckpt_dir, kwargs))
        self.evaluation = TrainingEvaluation(ckpt_dir, self.protocol, self.sampler, **kwargs)
        self._closed = False

    def _resume_pin(self, trainer: Any, ckpt_dir: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Settings that pin the step of the checkpoint ``fit(ckpt_path=...)`` resumed from (none for a fresh run).

        The pin is stored with the directory's deletion settings (one rule set per directory): the others are
        checked against the store first, then written back unchanged with the pin added (``reconfigure=True``)."""
        resume = trainer.ckpt_path
        if not resume:
            return {}
        path = Path(os.path.realpath(resume))  # ckpt_path="last" with save_last="link": the step file it names
        step = self.config.step_from_name(path.name)
        if step is None or path.parent != Path(os.path.realpath(ckpt_dir)):
            return {}  # not a checkpoint of this directory: bestckpt never deletes it anyway
        from bestckpt.tracking.settings import DELETION_SETTINGS
        from bestckpt.tracking.tracker import BestCheckpointTracker

        given = {k: kwargs[k] for k in DELETION_SETTINGS if k in kwargs}
        current = BestCheckpointTracker.open(ckpt_dir, **given).config  # refuses settings that differ from the store
        self.pinned_resume = step
        logger.info("Resumed from %s: step %d is pinned (never deleted)", path, step)
        if step in current.pinned_steps:
            return {}
        settings = {k: getattr(current, k) for k in DELETION_SETTINGS}
        settings["pinned_steps"] = tuple(sorted({*current.pinned_steps, step}))
        return dict(settings, reconfigure=True)

    # ------------------------------------------------------------------ saves
    def _saved(self, trainer: Any, path: Path) -> None:
        """Right after ``ModelCheckpoint`` saved ``path`` (every rank, after the save's barrier)."""
        if self.evaluation is None or self._closed:  # not this rank's, or a save after an exception closed it
            return
        t0 = time.perf_counter()
        step = self.config.step_from_name(path.name)
        if step is None:
            if not path.name.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST) and path.name not in self._warned:
                self._warned.add(path.name)
                logger.warning("%s is no step checkpoint name of %r (a version suffix after a re-save?): not "
                               "registered, bestckpt neither scores nor deletes it", path, self.config.filename_template)
            self._carry += time.perf_counter() - t0
            return
        marker = _async_marker(trainer)
        if marker is not None:
            self._waiting.append((marker, step, path, trainer.current_epoch))
            self._carry += time.perf_counter() - t0
            self._register_written(wait=False)
            return
        self._carry += time.perf_counter() - t0
        self._register(step, path, trainer.current_epoch)

    def _register(self, step: int, path: Path, epoch: int) -> None:
        assert self.evaluation is not None
        t0 = time.perf_counter()
        if path.is_dir() and getattr(self.evaluation.tracker, "is_writer", True):
            mark_complete(path, step=step)  # a DeepSpeed-strategy directory, whole now: tell sidecars too
        self.evaluation.checkpoint_saved(step, path, epoch=epoch)
        self.blocked_s.append(time.perf_counter() - t0 + self._carry)
        self._carry = 0.0

    def _register_written(self, wait: bool) -> None:
        """Register the async saves whose file is written, in save order (``wait``: all of them)."""
        while self._waiting and (wait or self._waiting[0][0].done()):
            marker, step, path, epoch = self._waiting.popleft()
            marker.result()
            if not path.exists():  # the save itself failed: AsyncCheckpointIO raises it at the next save/teardown
                logger.error("asynchronous save of %s failed (no file): not registered", path)
                continue
            self._register(step, path, epoch)

    # ------------------------------------------------------------------ during and after training
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.evaluation is None or self._closed:
            return
        t0 = time.perf_counter()
        self._register_written(wait=False)
        self.evaluation.poll()
        self._carry += time.perf_counter() - t0

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.evaluation is not None and not self._closed:
            self._register_written(wait=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Finish the queued evaluations (summary, results JSON), then make ``ckpt_path="best"`` bestckpt's best
        on every rank (rank 0's answer is broadcast: the other ranks wait here until its evaluations finished)."""
        best: tuple[str, float | None] | None = None
        if self.evaluation is not None and not self._closed:
            self._register_written(wait=True)
            self.evaluation.close(wait=True)
            self._closed = True
            record = self.evaluation.tracker.best
            if record is not None:
                best = (str(Path(self.evaluation.tracker.dir) / record.path),
                        record.score(self.evaluation.tracker.metric_name))
        if trainer.world_size > 1:
            best = trainer.strategy.broadcast(best, src=0)
        mc = self._model_checkpoint
        if best is not None and mc is not None:
            mc.best_model_path = best[0]
            mc.best_model_score = _tensor(best[1]) if best[1] is not None else None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Stop at once: queued checkpoints stay pending, the next run (or ``bestckpt evaluate``) scores them."""
        if self.evaluation is not None and not self._closed:
            self.evaluation.close(wait=False)
            self._closed = True

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        mc = self._model_checkpoint
        if mc is not None and getattr(mc.__dict__.get("_save_checkpoint"), _WRAPPED, False):
            del mc._save_checkpoint  # the class's method again
        self._model_checkpoint = None


def _tensor(value: float) -> Any:
    import torch

    return torch.tensor(value)


def _async_marker(trainer: Any) -> Any:
    """A future that completes once the last submitted async save is written, or None for synchronous IO.

    ``AsyncCheckpointIO`` writes in a one-thread executor (first in, first out): a no-op queued behind the
    save finishes after it."""
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    io = getattr(trainer.strategy, "checkpoint_io", None)
    if not isinstance(io, AsyncCheckpointIO):
        return None
    executor = getattr(io, "_executor", None)
    if executor is None:
        raise RuntimeError("AsyncCheckpointIO has no executor after a save (bestckpt was written against "
                           "lightning 2.6); use synchronous checkpoint IO with BestCheckpointCallback")
    return executor.submit(lambda: None)


def load_lightning_state_dict(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, checkpoint)`` of a Lightning checkpoint: a ``.ckpt`` file or a DeepSpeed-strategy directory.

    For a directory, the weights are DeepSpeed's ``checkpoint/mp_rank_00_model_states.pt`` ``module`` entry with
    Lightning's ``_forward_module.`` prefix removed (ZeRO-3 shards must be consolidated first). For samplers."""
    import torch

    path = Path(path)
    if path.is_dir():
        states = path / "checkpoint" / "mp_rank_00_model_states.pt"
        if not states.is_file():
            raise FileNotFoundError(f"{str(path)!r} is a directory without checkpoint/mp_rank_00_model_states.pt: "
                                    "not a Lightning DeepSpeed checkpoint")
        ckpt = torch.load(states, map_location="cpu", weights_only=False)
        module = ckpt.get("module") or {}
        return {k.removeprefix("_forward_module."): v for k, v in module.items()}, ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{str(path)!r} is no Lightning checkpoint (no 'state_dict'); save it with ModelCheckpoint")
    return ckpt["state_dict"], ckpt
