"""`bestckpt evaluate` and `bestckpt finalize` under torchrun: one process group for the command's lifetime.

``torchrun --nproc_per_node 8 -m bestckpt evaluate CKPT_DIR ... --device cuda`` starts 8 copies of the command.
:func:`launched` sees ``WORLD_SIZE`` > 1, puts each rank on ``cuda:LOCAL_RANK`` (for a CUDA ``--device``), joins the
process group (NCCL for CUDA, gloo for the CPU; ``--dist-backend`` overrides) with a collective timeout
(``--dist-timeout``), and hands the command a :class:`~bestckpt.evaluation.distributed.DistContext`: every rank
evaluates the same checkpoints, each sampling and scoring its shard; only global rank 0 writes the bookkeeping,
the results and the sinks and prints; the other ranks print only errors. Without ``WORLD_SIZE`` nothing changes
(one process, no process group).

Ranks stay in step by agreeing, as the library does (:func:`~bestckpt.evaluation.distributed.agree_on_errors`):
a rank that cannot start tells the others, and all stop together (:func:`in_turn`). A rank that dies (Ctrl-C, a
crash) leaves the others blocked at most until the collective timeout, and torchrun ends them as soon as it sees
the dead rank. The ranks leave together: a barrier, then the group is destroyed (torch's rare C++ abort at
interpreter exit is another matter, see tests/support/dist_exit.py); but never a barrier after an exception,
which a peer may never reach.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from bestckpt.errors import ConfigError

if TYPE_CHECKING:
    from bestckpt.evaluation.distributed import DistContext

__all__ = ["GLOO_WORKER_THREAD", "RanksLost", "add_distributed_options", "broadcast", "gloo_threads", "in_turn",
           "is_main", "launched", "run_command", "world_size"]

_T = TypeVar("_T")

#: the default collective timeout: a rank waits this long for a dead or stuck peer (ranks finish their shards at
#: about the same time; rank 0 also writes the bookkeeping and the sinks, which the others wait for at the end)
DEFAULT_TIMEOUT_S = 1800.0


class RanksLost(BaseException):
    """The ranks fell out of step (a peer died; a collective failed or timed out): every rank stops, nothing more is
    recorded. A BaseException so that no "record the failure and go on" handler takes it for the checkpoint's fault."""


def add_distributed_options(p: argparse.ArgumentParser) -> None:
    """``--dist-backend`` and ``--dist-timeout`` (used only under torchrun)."""
    p.add_argument("--dist-backend", choices=("nccl", "gloo"),
                   help="under torchrun: the process group's backend (default: nccl for a CUDA --device, else gloo)")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in a collective before it fails "
                        f"(default: {DEFAULT_TIMEOUT_S:g})")


def world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun sets it; 1 when absent)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={value!r} is not an int; fix the launcher "
                          "(torchrun sets it)") from None


def _rank_device(device: str | None, local_rank: int) -> str:
    """This rank's device: ``cuda`` (or no --device with CUDA available) -> ``cuda:LOCAL_RANK``; ``cpu`` stays."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return device
    if index:
        raise ConfigError(f"--device {device} names one GPU for every rank; under torchrun pass --device cuda "
                          f"(each rank then uses cuda:LOCAL_RANK, here cuda:{local_rank})")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise ConfigError(f"--device cuda: LOCAL_RANK {local_rank} needs cuda:{local_rank}, but this machine has {count} "
                          "usable GPU(s); start at most that many ranks per node (--nproc_per_node), or use --device cpu")
    return f"cuda:{local_rank}"


def _quiet() -> None:
    """The terminal is rank 0's: the other ranks log and warn only errors."""
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    warnings.simplefilter("ignore")


@contextlib.contextmanager
def launched(args: argparse.Namespace) -> Iterator[DistContext | None]:
    """The command's process group under torchrun (``WORLD_SIZE`` > 1), else ``None`` and nothing changes.

    Sets ``args.device`` to this rank's device. SIGTERM (torchrun ending the ranks after one failed) is taken like
    Ctrl-C, so the command still writes what it owes (the results file, the sinks' end). On a normal exit the ranks
    meet at a barrier, then the group is destroyed; after an exception it is destroyed at once."""
    if world_size() <= 1:
        yield None
        return
    import datetime

    import torch
    import torch.distributed as tdist

    from bestckpt.evaluation.distributed import current_context

    if not args.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout {args.dist_timeout:g}: must be a positive number of seconds, e.g. 1800")
    args.device = _rank_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    backend = args.dist_backend or ("nccl" if args.device.startswith("cuda") else "gloo")
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.dist_timeout))
    ctx = current_context()
    assert ctx is not None  # the group was just initialised
    if not ctx.is_main:
        _quiet()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield ctx
    except BaseException:
        with contextlib.suppress(Exception):
            tdist.destroy_process_group()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        tdist.barrier()
    except Exception as exc:  # this rank finished; another one did not reach the end
        with contextlib.suppress(Exception):
            tdist.destroy_process_group()
        raise RanksLost(f"this rank finished, but another one did not reach the end ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:300]}); see every rank's output") from exc
    tdist.destroy_process_group()


def run_command(args: argparse.Namespace, body: Callable[[argparse.Namespace, DistContext | None], int]) -> int:
    """``body(args, ctx)`` inside :func:`launched`; the ranks falling out of step (:class:`RanksLost`) is one line on
    stderr and exit code 2."""
    try:
        with launched(args) as ctx:
            code = body(args, ctx)
    except RanksLost as exc:
        from bestckpt.cli import fail

        return fail(str(exc))
    if ctx is not None:
        _leave(code)
    return code


#: the name torch gives ProcessGroupGloo's worker threads (``c10d::ProcessGroupGloo::runLoop``)
GLOO_WORKER_THREAD = "pt_gloo_runloop"


def gloo_threads() -> int:
    """How many ProcessGroupGloo worker threads this process still has (Linux ``/proc/self/task``; 0 elsewhere)."""
    names = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
    return names.count(GLOO_WORKER_THREAD)


def _leave(code: int) -> None:
    """End the process now when gloo worker threads outlived ``destroy_process_group`` (something in torch still
    holds the group: seen on rank 0): such a thread that drops a finished collective while the interpreter finalizes
    makes torch abort in C++ ("terminate called without an active exception", exit code -6, after all the work
    was done; traced in ``tests/support/dist_exit.py``). Everything is written and closed by now; this flushes what
    is buffered (logging, the terminal, a W&B service) and exits with the command's code."""
    if gloo_threads() == 0:
        return  # a normal interpreter exit is safe
    import sys

    logging.getLogger(__name__).debug("gloo worker threads outlive the process group: exiting without finalization")
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        with contextlib.suppress(Exception):
            wandb.teardown()  # what a W&B sink's run still has in flight reaches its files
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_main(ctx: DistContext | None) -> bool:
    """Whether this process owns the terminal and the bookkeeping (one process, or global rank 0)."""
    return ctx is None or ctx.is_main


def broadcast(obj: _T, ctx: DistContext | None) -> _T:
    """Rank 0's ``obj`` on every rank (what to do, decided once)."""
    from bestckpt.evaluation.distributed import broadcast_object

    return broadcast_object(obj, ctx)


def in_turn(ctx: DistContext | None, start: Callable[[], _T | None]) -> _T | None:
    """``start()`` (``None``: it failed and printed why) on rank 0, then on the other ranks, so they read what rank 0
    set up (the bookkeeping it opened as the writer); ``None`` on every rank when any rank failed."""
    if ctx is None:
        return start()
    from bestckpt.evaluation.distributed import agree_on_errors

    result: _T | None = None
    ok = True
    for rank0_turn in (True, False):
        if rank0_turn == ctx.is_main:
            result = _started(start)
            ok = result is not None
        errors = agree_on_errors(None if ok else "could not start", ctx)
        if errors:
            if ok and ctx.is_main:
                from bestckpt.cli import fail

                fail(f"{', '.join(errors)} (its error is above); every rank stops")
            return None
    return result


def _started(start: Callable[[], _T | None]) -> _T | None:
    """``start()``, with the errors the CLI prints as one line printed here (the other ranks must hear of them)."""
    from bestckpt.cli import _describe_os_error, fail
    from bestckpt.errors import BestckptError

    try:
        return start()
    except BestckptError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(_describe_os_error(exc))
    return None
