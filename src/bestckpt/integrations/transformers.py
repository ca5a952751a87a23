"""Hugging Face ``Trainer``: best-checkpoint tracking as one ``TrainerCallback``.

    from bestckpt.integrations.transformers import BestCheckpointCallback
    callback = BestCheckpointCallback(protocol, "my_project.sampling:make_sampler", save_top_k=3)
    trainer = Trainer(model, TrainingArguments(output_dir, save_steps=500, save_total_limit=None),
                      train_dataset=data, callbacks=[callback])
    trainer.train()          # best.pt -> output_dir/checkpoint-N, the guide's log lines, files and tags

The Trainer saves ``output_dir/checkpoint-{global_step}``; then every process calls ``on_save``. There
the callback waits for every process (each writes its own ``rng_state_{i}.pth``, DeepSpeed shards too),
marks the directory complete and, on world process zero only, hands it to a
:class:`~bestckpt.integrations.loop.TrainingEvaluation`: scored in a background worker process
(``mode="background"``, the default), ranked, ``best.pt`` pointed at the best, the rest pruned by the
tracker's retention (top-k, latest, every-N steps, pinned, pending). ``output_dir`` is the checkpoint
directory (``checkpoint-{step}`` names); ``evaluation_samples/``, ``tensorboard_logs/`` and
``logs/evaluation_worker.log`` go there too.

Settings refused at ``on_init_end`` and again at ``on_train_begin`` (a callback added with
``add_callback`` misses ``on_init_end``), with a :class:`~bestckpt.errors.ConfigError` naming the fix:

- ``save_total_limit`` > 0: the Trainer's ``rotate_checkpoints`` runs inside ``_save_checkpoint``,
  *before* ``on_save``, and deletes by its own rule (newest + its own best); it would delete behind
  bestckpt's back, checkpoints still pending evaluation or bestckpt's best included.
- ``load_best_model_at_end=True``: ``state.best_model_checkpoint`` is chosen by the Trainer's
  ``metric_for_best_model`` (e.g. ``eval_loss``), not by bestckpt's scores, and bestckpt may prune that
  directory before the Trainer loads it at the end. Refused rather than kept alive: keeping the
  Trainer's moving best would need a pin that changes at every evaluation. Load ``best.pt`` instead.
  (``metric_for_best_model`` alone is harmless: without rotation and without loading at the end the
  Trainer only remembers the path; a resume whose remembered best was pruned logs a warning and goes on.)
- ``Trainer.hyperparameter_search`` (at ``on_train_begin``): each trial saves under ``output_dir/run-<trial>``.

The checkpoint a run resumes from (``state.global_step`` at ``on_train_begin`` names it: the Trainer has
loaded ``trainer_state.json`` from it) is pinned in the directory's stored settings, so neither this
process nor the background worker nor ``bestckpt prune`` ever deletes it; pins only accumulate (remove
one on purpose with ``bestckpt prune DIR --reconfigure --pin STEP ... --yes``: the pins listed replace the
stored ones).

ZeRO-3: the model files in a checkpoint are empty placeholders (the Trainer removes them) unless the
DeepSpeed config sets ``stage3_gather_16bit_weights_on_model_save``; :func:`zero3_weights_missing` detects
it, the callback warns at ``on_train_begin``, and :func:`load_state_dict` refuses such a checkpoint with
the fix instead of evaluating nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bestckpt.errors import ConfigError
from bestckpt.integrations.loop import MODES, TrainingEvaluation
from bestckpt.runners import EvalSchedule
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.layout import mark_complete

__all__ = [
    "CHECKPOINT_TEMPLATE",
    "BestCheckpointCallback",
    "check_training_arguments",
    "load_state_dict",
    "resume_step",
    "zero3_weights_missing",
]

logger = logging.getLogger(__name__)

#: the Trainer's checkpoint directory names (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``)
CHECKPOINT_TEMPLATE = "checkpoint-{step}"
_TRACKER_SETTINGS = frozenset(f.name for f in dataclasses.fields(TrackerConfig)) - {"checkpoint_dir"}


def check_training_arguments(args: Any) -> None:
    """Refuse ``TrainingArguments`` under which the Trainer would delete or load checkpoints bestckpt manages."""
    limit = getattr(args, "save_total_limit", None)
    if limit is not None and limit > 0:
        raise ConfigError(
            f"TrainingArguments(save_total_limit={limit}) makes the Trainer delete checkpoints itself: its "
            "rotation runs before on_save, behind bestckpt, and may delete the best or a checkpoint still "
            "being evaluated. Set save_total_limit=None and choose what is kept with "
            "BestCheckpointCallback(save_top_k=..., keep_every_n_steps=...)")
    if getattr(args, "load_best_model_at_end", False):
        metric = getattr(args, "metric_for_best_model", None)
        raise ConfigError(
            f"TrainingArguments(load_best_model_at_end=True, metric_for_best_model={metric!r}) loads the Trainer's "
            "own best checkpoint at the end, which bestckpt does not rank by and may have pruned. Set "
            "load_best_model_at_end=False and load bestckpt's best after training: "
            "bestckpt.integrations.transformers.load_state_dict(f'{output_dir}/best.pt')")
    strategy = getattr(args, "save_strategy", None)
    if str(getattr(strategy, "value", strategy)) == "no":
        logger.warning("save_strategy='no': the Trainer saves no checkpoints, so bestckpt has nothing to track")


def zero3_weights_missing(deepspeed_config: Mapping[str, Any] | None) -> bool:
    """Whether checkpoints saved under this DeepSpeed config hold no model weights (ZeRO-3 without
    ``stage3_gather_16bit_weights_on_model_save``: only ``global_step*/`` shards, for ``zero_to_fp32``)."""
    zero = (deepspeed_config or {}).get("zero_optimization") or {}
    gather = zero.get("stage3_gather_16bit_weights_on_model_save", False)
    return zero.get("stage") == 3 and gather is not True


def resume_step(output_dir: str | Path, global_step: int) -> int | None:
    """The step of the checkpoint in ``output_dir`` a run resumed from, or None (a fresh run, or a
    checkpoint outside ``output_dir``). At ``on_train_begin`` the Trainer has already loaded the state of
    the checkpoint it resumes from, so ``state.global_step`` is its step (0 on a fresh run)."""
    if global_step <= 0:
        return None
    path = Path(output_dir) / CHECKPOINT_TEMPLATE.format(step=global_step)
    return global_step if path.is_dir() and not path.is_symlink() else None


def load_state_dict(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The model weights of a Trainer checkpoint directory (``best.pt`` works: it links to one).

    Reads ``model.safetensors`` or ``pytorch_model.bin`` (what ``Trainer._save`` writes for a plain
    ``nn.Module`` and, unsharded, for a ``PreTrainedModel``; for sharded ones use ``from_pretrained``).
    """
    import torch

    path = Path(checkpoint_dir)
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(path / "model.safetensors")))
    if (path / "pytorch_model.bin").is_file():
        return dict(torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True))
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a Trainer checkpoint directory (checkpoint-N)")
    if any(p.is_dir() and p.name.startswith("global_step") for p in path.iterdir()):
        raise FileNotFoundError(
            f"{str(path)!r} holds only DeepSpeed ZeRO-3 shards, no model weights: set "
            "zero_optimization.stage3_gather_16bit_weights_on_model_save=true in the DeepSpeed config, or "
            "consolidate with DeepSpeed's zero_to_fp32 in your sampler")
    names = sorted(p.name for p in path.iterdir())[:20]
    raise FileNotFoundError(f"{str(path)!r} has no model.safetensors or pytorch_model.bin (found {names}); "
                            "a sharded PreTrainedModel checkpoint loads with YourModel.from_pretrained(path)")


def _distributed() -> Any:
    """``torch.distributed`` when it runs with more than one process, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class BestCheckpointCallback(TrainerCallback):
    """Hands every checkpoint the Trainer saves to bestckpt (see the module docstring).

    ``protocol`` and ``sampler`` (a ``"module:factory"`` spec in ``"background"`` mode) are
    :class:`~bestckpt.integrations.loop.TrainingEvaluation`'s; so are ``mode`` and the other keywords
    (tracker settings such as ``save_top_k``, ``keep_every_n_steps``, ``metric_name``; ``on_result``,
    ``scorer_spec``, ``cache_dir``...). Defaults: ``schedule`` evaluates every 2nd checkpoint (the
    guide's stateless ``step % (save_steps * 2) == 0`` when ``save_strategy="steps"``);
    ``tensorboard_dir`` ``output_dir/tensorboard_logs``; ``log_file``
    ``output_dir/logs/evaluation_worker.log``. ``evaluation`` is the running TrainingEvaluation (on world
    process zero, between ``on_train_begin`` and ``on_train_end``); ``blocked_seconds`` holds, per
    checkpoint, the seconds the training loop spent in this callback for it (``on_save``, barrier
    included, plus the result polls since the previous checkpoint).
    """

    def __init__(self, protocol: Any, sampler: Any, *, mode: str = "background", schedule: EvalSchedule | None = None,
                 **options: Any) -> None:
        for name in ("checkpoint_dir", "tracker", "filename_template"):
            if name in options:
                raise TypeError(f"BestCheckpointCallback sets {name} itself (TrainingArguments.output_dir, "
                                f"{CHECKPOINT_TEMPLATE!r}); remove {name}=...")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.protocol, self.sampler, self.mode, self.schedule = protocol, sampler, mode, schedule
        self.options = options
        self.evaluation: TrainingEvaluation | None = None
        self.blocked_seconds: list[float] = []
        self._polls = 0.0  # seconds spent polling since the last checkpoint

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        check_training_arguments(args)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        check_training_arguments(args)
        if getattr(state, "is_hyper_param_search", False):
            raise ConfigError("Trainer.hyperparameter_search saves each trial under output_dir/run-<trial>, not "
                              "output_dir: BestCheckpointCallback does not support it; train the chosen "
                              "hyperparameters with trainer.train() and the callback")
        ds = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
        if zero3_weights_missing(ds) and state.is_world_process_zero:
            logger.warning("DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save: checkpoints hold no "
                           "model weights and evaluations will fail; set it to true in the DeepSpeed config")
        self.blocked_seconds, self._polls = [], 0.0
        dist = _distributed()
        if state.is_world_process_zero:
            self.evaluation = self._start(args, state, writer=True)
        if dist is not None and self.mode == "inline":  # every process evaluates: the others follow the writer
            dist.barrier()
            if not state.is_world_process_zero:
                self.evaluation = self._start(args, state, writer=False)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.evaluation is not None and self.mode == "background":
            t0 = time.perf_counter()
            self.evaluation.poll()  # arrived results: the guide's log lines, on_result
            self._polls += time.perf_counter() - t0

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        step = int(state.global_step)
        path = Path(args.output_dir) / CHECKPOINT_TEMPLATE.format(step=step)
        dist = _distributed()
        if dist is not None:
            dist.barrier()  # every process has written its part (rng_state_{i}.pth, DeepSpeed shards)
        if state.is_world_process_zero:
            mark_complete(path)
        if dist is not None and self.mode == "inline":
            dist.barrier()  # every process sees the marker before evaluating together
        if self.evaluation is not None:
            epoch = None if state.epoch is None else int(state.epoch)
            self.evaluation.checkpoint_saved(step, path, epoch=epoch)
        if state.is_world_process_zero:
            self.blocked_seconds.append(time.perf_counter() - t0 + self._polls)
            self._polls = 0.0

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self, wait: bool = True) -> None:
        """Finish queued evaluations (``wait=False``: leave them pending for the next run), log the summary,
        write the results JSON. ``on_train_end`` calls it; call it yourself if ``train()`` raised."""
        if self.evaluation is not None:
            evaluation, self.evaluation = self.evaluation, None
            evaluation.close(wait=wait)

    # ------------------------------------------------------------------ set-up
    def _start(self, args: Any, state: Any, *, writer: bool) -> TrainingEvaluation:
        out = Path(args.output_dir)
        options = dict(self.options)
        settings = {k: options.pop(k) for k in list(options) if k in _TRACKER_SETTINGS}
        settings["filename_template"] = CHECKPOINT_TEMPLATE
        if self.mode == "background":
            options.setdefault("log_file", out / "logs" / "evaluation_worker.log")
            Path(options["log_file"]).parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("tensorboard_dir", out / "tensorboard_logs")
        options.setdefault("experiment_dir", out)
        tracker = _open_tracker(out, settings, resume_step(out, int(state.global_step)), writer=writer)
        return TrainingEvaluation(out, self.protocol, self.sampler, mode=self.mode,
                                  schedule=self.schedule or _default_schedule(args, state), tracker=tracker, **options)


def _default_schedule(args: Any, state: Any) -> EvalSchedule:
    """Every 2nd checkpoint: stateless by step when the Trainer saves every ``save_steps`` steps."""
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    every = getattr(state, "save_steps", None)
    if str(strategy) == "steps" and isinstance(every, int) and every >= 1:
        return EvalSchedule(every_n_checkpoints=2, checkpoint_every_steps=every)
    return EvalSchedule(every_n_checkpoints=2)


def _open_tracker(out: Path, settings: dict[str, Any], pin: int | None, *, writer: bool) -> Any:
    """The run's tracker on ``out``, with the resume checkpoint ``pin`` added to the stored pinned steps.

    The settings given are first checked against the stored ones read-only (a difference is the tracker's
    usual ConfigError); pins are a union (stored, given, resumed-from), so the only reconfiguration this
    makes is adding a pin. Non-writer processes take the stored pins (the writer stored them first)."""
    from bestckpt.tracking.tracker import BestCheckpointTracker

    out.mkdir(parents=True, exist_ok=True)
    given_pins = tuple(settings.pop("pinned_steps", ()) or ())
    if not writer:
        return BestCheckpointTracker(out, is_writer=False, **settings)
    probe = BestCheckpointTracker(out, is_writer=False, **settings)  # validates; reads only
    stored = tuple(probe.config.pinned_steps)
    pins = tuple(sorted(set(stored) | set(given_pins) | ({pin} if pin is not None else set())))
    reconfigure = pins != stored and bool(probe.stored_config)
    tracker = BestCheckpointTracker(out, is_writer=True, reconfigure=reconfigure, pinned_steps=pins, **settings)
    if pin is not None:
        logger.info("resuming from %s: pinned (bestckpt never deletes it)", out / CHECKPOINT_TEMPLATE.format(step=pin))
    return tracker
