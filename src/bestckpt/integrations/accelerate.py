"""diffusers / accelerate training scripts: register ``checkpoint-{step}`` after ``accelerator.save_state``.

Four lines in a diffusers-style script (``docs/integrations/diffusers.md``)::

    from bestckpt.integrations.accelerate import AccelerateCheckpoints               # bestckpt
    best = AccelerateCheckpoints(accelerator, args.output_dir, protocol, "my_pkg.sampling:make_sampler",
                                 checkpoints_total_limit=args.checkpoints_total_limit)  # bestckpt
    ...
            accelerator.save_state(save_path)      # inside `if accelerator.is_main_process:` or not
        best.checkpoint_saved(global_step)         # bestckpt: on EVERY process, after the save
    ...
    best.close()                                   # bestckpt: after the final save, before end_training()

Rank rules (accelerate 1.x): ``save_state`` has no final barrier; every process that calls it
writes its own ``random_states_{i}.pkl`` and, under DeepSpeed, its shards; the main process writes
the weights, ``unet``/``unet_ema`` (diffusers' save hook) and the optimizer. So
:meth:`AccelerateCheckpoints.checkpoint_saved` waits for every process, then the main process
marks the directory complete and registers it (the tracker, the background evaluation worker and
the pruning live there only), then one small broadcast carries the main process's outcome to the
others: when registration fails, every process raises the same error instead of hanging in the
next gradient all-reduce. No other barrier: nothing any process does after a save reads the older
checkpoints the main process may prune.

Total limits: the tracker is the only thing that deletes checkpoints. ``--checkpoints_total_limit``
(diffusers) deletes the oldest ``checkpoint-*`` folders by step *before* each save, which can
delete the best checkpoint or one still being evaluated, and accelerate's
``ProjectConfiguration(automatic_checkpoint_naming=True)`` saves into ``checkpoints/checkpoint_{i}``
(numbered by save count, not step; its ``total_limit`` deletes there and its sort fails on any
non-numeric name, so bestckpt cannot keep ``best.pt`` beside them). Both are refused at start
with a :class:`~bestckpt.errors.ConfigError` naming the setting and the fix, rather than taken
over silently: a limit of N oldest-first is not a retention policy we can honour (keeping the
best needs more than N) and a run that silently changes what is kept surprises its owner.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bestckpt.errors import ConfigError
from bestckpt.tracking.layout import mark_complete

__all__ = [
    "CHECKPOINT_TEMPLATE",
    "AccelerateCheckpoints",
    "check_total_limits",
    "load_unet",
]

logger = logging.getLogger(__name__)

#: diffusers' checkpoint folder name: ``os.path.join(output_dir, f"checkpoint-{global_step}")``
CHECKPOINT_TEMPLATE = "checkpoint-{step}"


def check_total_limits(accelerator: Any = None, checkpoints_total_limit: int | None = None) -> None:
    """Refuse the script's own deletion of checkpoints (see the module docstring for why).

    ``checkpoints_total_limit``: the script's ``--checkpoints_total_limit``; ``accelerator``: its
    ``ProjectConfiguration`` is read (``automatic_checkpoint_naming``, ``total_limit``).
    """
    if checkpoints_total_limit is not None:
        raise ConfigError(
            f"--checkpoints_total_limit={checkpoints_total_limit} deletes the oldest checkpoint-* folders before "
            "every save, behind bestckpt's back (it may delete the best checkpoint or one still being evaluated). "
            "Drop --checkpoints_total_limit; bestckpt prunes instead: save_top_k=, keep_latest=, "
            "keep_every_n_steps= of AccelerateCheckpoints decide what is kept"
        )
    config = getattr(accelerator, "project_configuration", None)
    if config is None:
        return
    if getattr(config, "automatic_checkpoint_naming", False):
        limit = getattr(config, "total_limit", None)
        raise ConfigError(
            "ProjectConfiguration(automatic_checkpoint_naming=True"
            + (f", total_limit={limit}" if limit is not None else "")
            + ") saves to checkpoints/checkpoint_{i} (numbered by save count, not step) and deletes there by "
            "its own count; bestckpt cannot rank or keep those. Use automatic_checkpoint_naming=False and "
            "accelerator.save_state(os.path.join(output_dir, f'checkpoint-{global_step}')), as diffusers scripts do"
        )


def _agree(accelerator: Any, error: BaseException | None, what: str) -> None:
    """Every process learns whether the main process's part of ``what`` failed; all raise if it did."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import broadcast_object_list  # type: ignore[import-untyped]

    message = [None if error is None else f"{type(error).__name__}: {error}"]
    broadcast_object_list(message, from_process=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RuntimeError(f"bestckpt: {what} failed on the main process: {message[0]}")


class AccelerateCheckpoints:
    """bestckpt for an accelerate (diffusers) training script. Create and call on **every** process.

    ``output_dir``: where the script saves ``checkpoint-{step}`` folders (the tracker keeps
    ``best.pt`` and its state files beside them, and nothing else there); evaluation outputs
    (samples, worker log, TensorBoard tags, reference cache) go to ``output_dir/bestckpt`` unless
    given. ``protocol``: a :class:`~bestckpt.evaluation.protocol.Protocol`, or a function returning
    one, called on the main process only after the checks (building one may write reference files).
    ``sampler``/``mode`` and ``evaluation_kwargs`` (tracking settings such as
    ``save_top_k``, ``keep_every_n_steps``, ``metric_name``, ``schedule``, ``on_result``) are
    :class:`~bestckpt.integrations.loop.TrainingEvaluation`'s, built on the main process only.
    ``mode``: ``"background"`` (a worker process on the main process's machine) or ``"off"``
    (track and prune only); inline evaluation is not offered (it would need every process).
    ``evaluate_every_n_checkpoints``: the guide's every 2nd checkpoint by default (ignored when
    ``schedule=`` is given). ``keep_latest`` stays at least 1: the newest checkpoint is the one
    ``--resume_from_checkpoint latest`` picks.
    ``blocked_s`` holds, per checkpoint, the seconds the calling process spent in
    :meth:`checkpoint_saved` (barrier and broadcast included).
    """

    def __init__(self, accelerator: Any, output_dir: str | Path, protocol: Any = None, sampler: Any = None, *,
                 checkpoints_total_limit: int | None = None, mode: str = "background",
                 evaluate_every_n_checkpoints: int = 2, **evaluation_kwargs: Any) -> None:
        if mode not in ("background", "off"):
            raise ConfigError(f"mode={mode!r}: AccelerateCheckpoints evaluates in 'background' (a worker process "
                              "on the main process) or not at all ('off')")
        check_total_limits(accelerator, checkpoints_total_limit)
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.evaluation: Any = None
        self.blocked_s: list[float] = []
        error: BaseException | None = None
        if "schedule" not in evaluation_kwargs:
            from bestckpt.runners import EvalSchedule

            evaluation_kwargs["schedule"] = EvalSchedule(every_n_checkpoints=evaluate_every_n_checkpoints)
        if accelerator.is_main_process:
            try:
                self.evaluation = self._start(protocol, sampler, mode, evaluation_kwargs)
            except Exception as exc:  # told to every process below, then raised here (Ctrl-C reaches all anyway)
                error = exc
        _agree(accelerator, error, "starting the checkpoint tracker")

    def _start(self, protocol: Any, sampler: Any, mode: str, kwargs: dict[str, Any]) -> Any:
        from bestckpt.integrations.loop import TrainingEvaluation

        own = self.output_dir / "bestckpt"
        if callable(protocol):
            protocol = protocol()
        kwargs.setdefault("experiment_dir", own)
        if mode == "background":
            kwargs.setdefault("tensorboard_dir", own / "tensorboard_logs")
            kwargs.setdefault("cache_dir", own / "cache")
            kwargs.setdefault("log_file", own / "logs" / "evaluation_worker.log")
            Path(kwargs["log_file"]).parent.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return TrainingEvaluation(self.output_dir, protocol, sampler, mode=mode, is_writer=True,
                                  filename_template=CHECKPOINT_TEMPLATE, **kwargs)

    @property
    def tracker(self) -> Any:
        """The main process's tracker (None on the other processes)."""
        return None if self.evaluation is None else self.evaluation.tracker

    def checkpoint_saved(self, step: int, path: str | Path | None = None, epoch: int | None = None) -> Any:
        """Call on every process right after ``accelerator.save_state`` (``path``: default ``checkpoint-{step}``).

        Returns :meth:`TrainingEvaluation.checkpoint_saved`'s answer on the main process, None elsewhere.
        """
        start = time.perf_counter()
        folder = Path(path) if path is not None else self.output_dir / CHECKPOINT_TEMPLATE.format(step=int(step))
        self.accelerator.wait_for_everyone()  # save_state has no final barrier: every process's files are written
        answer, error = None, None
        if self.evaluation is not None:
            try:
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"checkpoint_saved({step}): {str(folder)!r} is not a directory; call it after "
                        f"accelerator.save_state(os.path.join(output_dir, 'checkpoint-{step}')) (or pass path=)")
                mark_complete(folder, step=int(step))
                answer = self.evaluation.checkpoint_saved(int(step), folder, epoch=epoch)
            except Exception as exc:  # told to every process below, then raised here
                error = exc
        _agree(self.accelerator, error, f"registering {folder.name}")
        self.blocked_s.append(time.perf_counter() - start)
        return answer

    def poll(self) -> list[Any]:
        """Deliver background results that arrived (main process; [] elsewhere)."""
        return [] if self.evaluation is None else self.evaluation.poll()

    def close(self, wait: bool = True) -> None:
        """Finish queued evaluations, log the summary, export results (main process; no barrier)."""
        if self.evaluation is not None:
            self.evaluation.close(wait=wait)


def load_unet(checkpoint_dir: str | Path, model_cls: Any, *, prefer_ema: bool = True, subfolder: str = "unet",
              ema_subfolder: str = "unet_ema", log: Callable[..., None] | None = None,
              **from_pretrained_kwargs: Any) -> tuple[Any, str]:
    """``(model, "ema" | "online")`` from a diffusers ``checkpoint-{step}`` folder, for a sampler.

    diffusers' save hook writes ``unet_ema`` (``EMAModel.save_pretrained``, with ``--use_ema``) and
    ``unet`` (``save_pretrained``); the EMA weights are what gets deployed, so they are preferred.
    ``model_cls``: a diffusers ``ModelMixin`` class (``UNet2DConditionModel``...). Which weights were
    used is logged and returned, for the sampler's ``SampleBatch(weights=...)``.
    """
    root = Path(checkpoint_dir)
    choices = ([(ema_subfolder, "ema")] if prefer_ema else []) + [(subfolder, "online")]
    for name, which in choices:
        if (root / name / "config.json").is_file():
            model = model_cls.from_pretrained(str(root / name), **from_pretrained_kwargs)
            (log or logger.info)("%s: sampling with the %s weights (%s/)", root.name, which, name)
            return model, which
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    raise FileNotFoundError(
        f"{str(root)!r} has no {' or '.join(n + '/config.json' for n, _ in choices)} (found: {found[:20]}); "
        "register diffusers' save_model_hook (model.save_pretrained(os.path.join(output_dir, 'unet')), "
        "ema_unet.save_pretrained(os.path.join(output_dir, 'unet_ema'))) with accelerator.register_save_state_pre_hook"
    )
