"""Which process writes a checkpoint directory's bookkeeping: one writer, global rank 0.

Every rank of a distributed run may call the tracker; only the writer writes, the others read the
state and compute the same answers in memory, so no rank has to coordinate with another.
"""
from __future__ import annotations

import os
import sys

__all__ = ["default_is_writer"]


def default_is_writer() -> bool:
    """Global rank 0 under an initialised ``torch.distributed``, else ``RANK`` == 0, else True.

    torch is only consulted when the program already imported it (the tracking core never imports torch).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank() == 0
        except Exception:  # a half-initialised process group: fall back to the environment
            pass
    rank = os.environ.get("RANK")
    if rank is not None:
        try:
            return int(rank) == 0
        except ValueError:
            raise ValueError(f"environment variable RANK={rank!r} is not an int; fix the launcher or pass is_writer") from None
    return True
