"""DeepSpeed checkpoints: tag names, completeness, and loading weights for samplers.

DeepSpeed's ``engine.save_checkpoint(save_dir, tag, client_state)`` must be called on every rank and
writes a *directory* per tag (``0002000.pt/`` holding ``mp_rank_00_model_states.pt`` with keys
``module``, ``ema`` when the client state has it, ``steps``, ``epoch``...). It writes
``save_dir/latest`` before its final barrier, so ``latest`` can name a tag whose shards are still being
written: after ``save_checkpoint`` returns, call :func:`mark_complete` on rank 0 so a sidecar knows the
tag is whole. deepspeed itself is never imported here (the helpers work on the files).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bestckpt.tracking.config import DEFAULT_FILENAME_TEMPLATE, TrackerConfig
from bestckpt.tracking.layout import (
    find_checkpoints,
    is_checkpoint_complete,
    mark_complete,
    read_latest_tag,
)

__all__ = [
    "MODEL_STATES",
    "is_tag_complete",
    "load_model_states",
    "mark_complete",
    "read_latest_tag",
    "save_checkpoint",
    "tag_name",
]

logger = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"


def tag_name(step: int) -> str:
    """The tag of step ``step`` (``0002000.pt``): the tracker's default file-name template."""
    return DEFAULT_FILENAME_TEMPLATE.format(step=int(step))


def is_tag_complete(checkpoint_dir: str | Path, tag: str, *,
                    step_from_name: Callable[[str], int | None] | None = None) -> bool:
    """Complete when marked, named by ``latest``, or followed by a later step checkpoint.

    The directory is read by :func:`~bestckpt.tracking.layout.find_checkpoints`, the tracker's own
    scan; ``step_from_name`` parses entry names (default: the tracker's default template, the one
    :func:`tag_name` writes; pass ``TrackerConfig.step_from_name`` for another template).
    """
    root = Path(checkpoint_dir)
    parse = step_from_name if step_from_name is not None else TrackerConfig(checkpoint_dir=root).step_from_name
    for _, path, complete in find_checkpoints(root, parse):
        if path.name == tag:
            return complete
    # not a step checkpoint name (or a symlink): only the marker or `latest` can vouch for it
    return is_checkpoint_complete(root / tag, later_exists=False, latest_tag=read_latest_tag(root))


def load_model_states(tag_dir: str | Path, *, prefer_ema: bool = True, map_location: Any = "cpu") -> tuple[dict[str, Any], str]:
    """``(state_dict, weights)`` from a tag directory: the EMA weights when present (``"ema"``), else ``module``.

    Samplers should evaluate EMA weights (that is what gets deployed) and report which they used.
    """
    import torch

    path = Path(tag_dir)
    if path.is_dir():
        path = path / MODEL_STATES
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: not a DeepSpeed tag directory (expected {MODEL_STATES} inside)"
        )
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, expected DeepSpeed's model-states dict")
    if prefer_ema and isinstance(state.get("ema"), dict):
        return state["ema"], "ema"
    if isinstance(state.get("module"), dict):
        return state["module"], "online"
    raise KeyError(f"{str(path)!r} has neither 'ema' nor 'module' weights; keys: {sorted(state)[:20]}")


def save_checkpoint(engine: Any, checkpoint_dir: str | Path, step: int, *, client_state: dict[str, Any] | None = None,
                    runner: Any = None, epoch: int | None = None) -> Path:
    """Save on every rank, mark complete on rank 0, then tell the runner (call on **every** rank).

    With an ``InlineRunner`` every rank calls ``checkpoint_saved`` (all ranks evaluate together);
    with a ``BackgroundRunner`` (created on rank 0 only) pass ``runner=None`` on the other ranks.
    """
    import torch.distributed as tdist

    tag = tag_name(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state or {})
    rank = tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0
    tag_dir = Path(checkpoint_dir) / tag
    if rank == 0:
        mark_complete(tag_dir, step=step)
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()  # every rank sees the marker before any evaluation starts
    if runner is not None:
        runner.checkpoint_saved(step, tag_dir, epoch=epoch)
    return tag_dir
