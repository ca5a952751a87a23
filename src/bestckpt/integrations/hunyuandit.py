"""HunyuanDiT (``hydit/train_deepspeed.py``): its DeepSpeed tags, their weights, and the few lines it calls.

HunyuanDiT's ``save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by)`` runs on
every rank and writes DeepSpeed *tag directories* into ``{results_dir}/{NNN}-{task_flag}/checkpoints``:

- ``{train_steps:07d}.pt`` every ``--ckpt-every`` steps: registered with its step;
- ``e{epoch:04d}.pt`` at the end of every ``--ckpt-every-n-epoch``-th epoch: registered with its training step
  (an explicit path), unless that step's ``{step:07d}.pt`` tag was registered already (same weights);
- ``latest.pt`` (overwritten every ``--ckpt-latest-every`` steps) and ``final.pt``: never registered, never
  touched (they are not one step's checkpoint: ``latest.pt`` is rewritten in place).

The client state is ``{"steps", "epoch", "args"}`` plus ``"ema"`` with ``--use-ema``; DeepSpeed merges it into
``mp_rank_00_model_states.pt`` (ZeRO 0-2) or into every ``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` (ZeRO-3,
whose ``module`` then holds empty placeholders: the weights live in the optimizer-state shards and are
consolidated with DeepSpeed's own ``zero_to_fp32``). After the save HunyuanDiT means to delete
``zero_*_optim_states.pt`` on rank 0 unless ``--save-optimizer-state`` (its glob formats the ``(ok, path)`` tuple
and never matches at Tencent/HunyuanDiT 368280e; a fixed script does delete): that is the script's own clean-up
inside a tag, never a pruning, and under ZeRO-3 it removes what consolidation needs (:func:`consolidate_zero3` says so).

Rank rule (:func:`tags_saved`): every rank saves; rank 0 alone marks each tag complete and registers it, after
``save_checkpoint`` returned (DeepSpeed's save ends with a barrier, so every rank's shards are written).
deepspeed is imported lazily, only to consolidate ZeRO-3 weights.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bestckpt.integrations.deepspeed import MODEL_STATES, mark_complete, tag_name

__all__ = [
    "EPOCH_TAG",
    "UNTOUCHED_TAGS",
    "ZERO3_MODEL_STATES",
    "TagRegistrar",
    "active",
    "close",
    "consolidate_zero3",
    "is_zero3",
    "load_tag_weights",
    "model_states_file",
    "read_client_state",
    "start",
    "tag_kind",
    "tags_saved",
]

logger = logging.getLogger(__name__)

#: rank 0's model-states file of a ZeRO-3 tag (client state included; ``module`` holds placeholders)
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"
#: HunyuanDiT's epoch tags, ``e{epoch:04d}.pt``
EPOCH_TAG = re.compile(r"e(\d{4,})\.pt")
#: HunyuanDiT's tags that are no single step's checkpoint: never registered, never touched
UNTOUCHED_TAGS = ("latest.pt", "final.pt")
_STEP_TAG = re.compile(r"(\d{7,})\.pt")


def tag_kind(name: str) -> str | None:
    """``"step"`` (``0001000.pt``), ``"epoch"`` (``e0002.pt``), ``"untouched"`` (``latest.pt``, ``final.pt``), else None."""
    if _STEP_TAG.fullmatch(name):
        return "step"
    if EPOCH_TAG.fullmatch(name):
        return "epoch"
    return "untouched" if name in UNTOUCHED_TAGS else None


# ------------------------------------------------------------------------------------------- weights

def model_states_file(tag_dir: str | Path) -> Path:
    """The model-states file of a tag: ``mp_rank_00_model_states.pt`` (ZeRO 0-2) or ``zero_pp_rank_0_...`` (ZeRO-3)."""
    tag = Path(tag_dir)
    for name in (MODEL_STATES, ZERO3_MODEL_STATES):
        if (tag / name).is_file():
            return tag / name
    raise FileNotFoundError(
        f"{str(tag)!r} is not a DeepSpeed tag directory: it holds neither {MODEL_STATES} (ZeRO 0-2) nor "
        f"{ZERO3_MODEL_STATES} (ZeRO-3); pass a tag HunyuanDiT's save_checkpoint wrote (e.g. 0001000.pt)"
    )


def is_zero3(tag_dir: str | Path) -> bool:
    """Whether the tag holds ZeRO-3 partitioned weights (``zero_pp_rank_*_mp_rank_00_model_states.pt``)."""
    return model_states_file(tag_dir).name == ZERO3_MODEL_STATES


def read_client_state(tag_dir: str | Path) -> dict[str, Any]:
    """The tag's rank-0 model-states dict (DeepSpeed's keys plus HunyuanDiT's ``steps``, ``epoch``, ``args``, ``ema``).

    ``args`` is an ``argparse.Namespace``, so this loads with ``weights_only=False``: read only checkpoints you trust.
    """
    import torch

    path = model_states_file(tag_dir)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, expected DeepSpeed's model-states dict")
    return state


def consolidate_zero3(tag_dir: str | Path) -> dict[str, Any]:
    """The full fp32 ``module`` state dict of a ZeRO-3 tag, rebuilt by DeepSpeed's ``zero_to_fp32``.

    ZeRO-3 keeps the real weights only in the fp32 partitions of the optimizer-state shards
    (``zero_pp_rank_{r}_mp_rank_00_optim_states.pt``), which HunyuanDiT's ``save_checkpoint`` means to delete
    unless ``--save-optimizer-state``: without them this raises ``FileNotFoundError`` saying so.
    """
    tag = Path(tag_dir)
    if not any(tag.glob("zero_pp_rank_*_mp_rank_*_model_states.pt")):
        raise FileNotFoundError(f"{str(tag)!r} holds no ZeRO-3 model-states shards (zero_pp_rank_*_model_states.pt)")
    if not any(tag.glob("*zero_pp_rank_*_optim_states.pt")):
        raise FileNotFoundError(
            f"cannot consolidate the ZeRO-3 weights of {str(tag)!r}: its optimizer-state shards "
            "(zero_pp_rank_*_mp_rank_00_optim_states.pt), the only copy of the partitioned fp32 weights, were "
            "deleted (the clean-up hydit/train_deepspeed.py's save_checkpoint intends: zero_*_optim_states.pt after each "
            "save). Train with --save-optimizer-state, or evaluate EMA weights (--use-ema: the full EMA is in the "
            "client state)"
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # type: ignore[import-untyped]

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name))


def load_tag_weights(tag_dir: str | Path, *, prefer_ema: bool = True) -> tuple[dict[str, Any], str]:
    """``(state_dict, "ema" | "online")`` of a HunyuanDiT tag, the weights a sampler should load.

    EMA weights (the client state's ``ema``, full on every ZeRO stage) when present and ``prefer_ema``; else
    the ``module`` weights, consolidated from the shards for ZeRO-3 (:func:`consolidate_zero3`).
    """
    state = read_client_state(tag_dir)
    if prefer_ema and isinstance(state.get("ema"), dict):
        return state["ema"], "ema"
    if model_states_file(tag_dir).name == ZERO3_MODEL_STATES:
        return consolidate_zero3(tag_dir), "online"
    if isinstance(state.get("module"), dict):
        return state["module"], "online"
    raise KeyError(f"{str(tag_dir)!r} has neither 'ema' nor 'module' weights; keys: {sorted(state)[:20]}")


# ------------------------------------------------------------------------------------------- the script's calls

class TagRegistrar:
    """Rank 0's side of the patch: marks HunyuanDiT's tags complete and hands them to a ``TrainingEvaluation``.

    ``blocked_s`` holds, per call that registered a tag, the seconds the training loop spent in it.
    """

    def __init__(self, evaluation: Any, checkpoint_dir: str | Path) -> None:
        self.evaluation = evaluation
        self.checkpoint_dir = Path(checkpoint_dir)
        self.blocked_s: list[float] = []
        self.registered: dict[int, str] = {}  # step -> tag registered by this process

    def tags_saved(self, dst_paths: Iterable[tuple[bool, str]], train_steps: int, epoch: int) -> list[str]:
        """Register the tags HunyuanDiT's ``save_checkpoint`` saved (its ``dst_paths``); returns their names."""
        t0 = time.perf_counter()
        done = []
        for ok, path in dst_paths:
            name = Path(path).name
            kind = tag_kind(name)
            if not ok or kind in (None, "untouched"):
                continue  # a failed save, latest.pt, final.pt: not one step's checkpoint
            if kind == "step" and name != tag_name(train_steps):
                raise ValueError(f"tag {name!r} saved at train_steps={train_steps}: a step tag must be "
                                 f"{tag_name(train_steps)!r}; pass save_checkpoint's own train_steps")
            if train_steps in self.registered:
                logger.info("%s holds the weights of step %d, registered as %s: left unregistered (untouched)",
                            name, train_steps, self.registered[train_steps])
                continue
            tag_dir = self.checkpoint_dir / name
            mark_complete(tag_dir, step=train_steps)  # saved on every rank: whole; the step is for sidecars
            self.evaluation.checkpoint_saved(train_steps, tag_dir, epoch)
            self.registered[train_steps] = name
            done.append(name)
        if done:
            self.blocked_s.append(time.perf_counter() - t0)
        return done

    def close(self, wait: bool = True) -> None:
        """Finish queued evaluations, log the summary, write the results JSON."""
        self.evaluation.close(wait=wait)


_active: TagRegistrar | None = None


def start(checkpoint_dir: str | Path, rank: int, protocol: Any, sampler: str, *, every_n_checkpoints: int = 2,
          **options: Any) -> TagRegistrar | None:
    """Call on every rank after ``create_exp_folder``: rank 0 starts a background ``TrainingEvaluation`` that
    evaluates every ``every_n_checkpoints``-th registered tag (the guide's default: 2); other ranks get None.

    ``protocol`` is a :class:`~bestckpt.evaluation.protocol.Protocol` or the path of its JSON file (read on rank 0
    only); ``sampler`` a ``"module:factory"`` spec; ``options`` pass through to ``TrainingEvaluation`` and the
    tracker (``save_top_k``, ``keep_every_n_steps``, ``device``...); the worker's log goes to
    ``{experiment_dir}/logs/evaluation_worker.log``, TensorBoard scalars to ``{experiment_dir}/tensorboard_logs``
    (as in the demo). The registrar becomes the one :func:`tags_saved` uses.
    """
    global _active
    if rank != 0:
        return None
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.integrations.loop import TrainingEvaluation
    from bestckpt.runners import EvalSchedule

    if isinstance(protocol, (str, Path)):
        protocol = Protocol.from_file(protocol)
    options.setdefault("schedule", EvalSchedule(every_n_checkpoints=every_n_checkpoints))
    experiment = Path(checkpoint_dir).parent  # HunyuanDiT's {results_dir}/{NNN}-{task_flag}: files as in the demo
    (experiment / "logs").mkdir(parents=True, exist_ok=True)
    options.setdefault("mode", "background")
    options.setdefault("log_file", experiment / "logs" / "evaluation_worker.log")
    options.setdefault("tensorboard_dir", experiment / "tensorboard_logs")
    _active = TagRegistrar(TrainingEvaluation(checkpoint_dir, protocol, sampler, **options), checkpoint_dir)
    return _active


def active() -> TagRegistrar | None:
    """The registrar :func:`start` made in this process (None on ranks other than 0, or before ``start``)."""
    return _active


def tags_saved(rank: int, dst_paths: Sequence[tuple[bool, str]], train_steps: int, epoch: int) -> list[str]:
    """Call on every rank at the end of ``save_checkpoint`` (after the save, and after the optimizer-state
    clean-up): rank 0 marks the saved tags complete and registers them; other ranks return at once."""
    if rank != 0:
        return []
    if _active is None:
        raise RuntimeError("bestckpt's HunyuanDiT integration was not started on rank 0: call "
                           "bestckpt.integrations.hunyuandit.start(checkpoint_dir, rank, protocol, sampler) in main()")
    return _active.tags_saved(dst_paths, train_steps, epoch)


def close(rank: int, wait: bool = True) -> None:
    """Call on every rank at the end of ``main``: rank 0 waits for queued evaluations and writes the summary."""
    global _active
    if rank == 0 and _active is not None:
        _active.close(wait=wait)
        _active = None
