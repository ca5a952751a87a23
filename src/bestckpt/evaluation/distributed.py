"""Collective helpers for evaluation under ``torch.distributed`` (gloo and NCCL).

The rule that keeps a run from hanging (the original disabled evaluation after NCCL timeouts):
**every rank enters every collective, in the same order, whatever happened locally.** A rank
whose sampler raised does not skip the gather; it reports its failure in :func:`agree_on_errors`,
which every rank calls, and then *all* ranks skip the rest together.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import torch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "DistContext",
    "agree_on_errors",
    "all_gather_padded",
    "broadcast_object",
    "current_context",
    "gather_objects",
    "shard_range",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and the device collectives run on (CUDA for NCCL, CPU for gloo)."""

    rank: int
    world_size: int
    comm_device: torch.device
    group: ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_context(group: ProcessGroup | None = None) -> DistContext | None:
    """The initialised default process group as a :class:`DistContext`, or None when not distributed."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return None
    backend = tdist.get_backend(group)
    if backend == "nccl":
        comm_device = torch.device("cuda", torch.cuda.current_device())
    else:
        comm_device = torch.device("cpu")
    return DistContext(
        rank=tdist.get_rank(group), world_size=tdist.get_world_size(group), comm_device=comm_device, group=group
    )


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Contiguous shard of ``range(n)`` for ``rank``; sizes differ by at most one.

    Contiguous (not strided) so concatenating the gathered shards in rank order restores the
    global sample order: sample ``i`` always gets prompt ``i`` and seed ``i``, whatever the world size.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return range(start, stop)


def all_gather_padded(tensor: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Gather ``Tensor[n_r, ...]`` from every rank and concatenate in rank order -> ``Tensor[sum n_r, ...]``.

    Shards may have different lengths (and may be empty): sizes are exchanged first, each shard is
    padded to the largest, gathered, and trimmed. Trailing dimensions and dtype must agree across
    ranks (they do: same protocol, same backbones). The result is on the CPU.
    """
    if ctx is None or ctx.world_size == 1:
        return tensor.detach().cpu()
    import torch.distributed as tdist

    local = tensor.detach().to(ctx.comm_device).contiguous()
    size = torch.tensor([local.shape[0]], dtype=torch.long, device=ctx.comm_device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    tdist.all_gather(sizes, size, group=ctx.group)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if longest == 0:
        return local.cpu()
    if local.shape[0] < longest:
        pad = torch.zeros((longest - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
        local = torch.cat([local, pad], dim=0)
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    tdist.all_gather(parts, local, group=ctx.group)
    return torch.cat([p[:c].cpu() for p, c in zip(parts, counts)], dim=0)


def agree_on_errors(error: str | None, ctx: DistContext | None) -> list[str]:
    """Every rank reports ``error`` (None when fine); every rank gets the list of all failures.

    This is the collective status exchange that lets all ranks skip the remaining collectives
    *together* when any one of them failed.
    """
    if ctx is None or ctx.world_size == 1:
        return [] if error is None else [error]
    import torch.distributed as tdist

    statuses: list[str | None] = [None] * ctx.world_size
    tdist.all_gather_object(statuses, error, group=ctx.group)
    return [f"rank {r}: {e}" for r, e in enumerate(statuses) if e is not None]


def broadcast_object(obj: _T, ctx: DistContext | None, src: int = 0) -> _T:
    """Rank ``src``'s ``obj`` on every rank (pickled; small objects only: scores, messages)."""
    if ctx is None or ctx.world_size == 1:
        return obj
    import torch.distributed as tdist

    box: list[_T | None] = [obj if ctx.rank == src else None]
    tdist.broadcast_object_list(box, src=src, group=ctx.group, device=ctx.comm_device)
    return cast(_T, box[0])  # rank src's object, received on every rank


def gather_objects(obj: _T, ctx: DistContext | None) -> Sequence[_T]:
    """Every rank's ``obj`` on every rank, in rank order."""
    if ctx is None or ctx.world_size == 1:
        return [obj]
    import torch.distributed as tdist

    out: list[_T | None] = [None] * ctx.world_size
    tdist.all_gather_object(out, obj, group=ctx.group)
    return cast("list[_T]", out)  # every slot now holds a rank's object
