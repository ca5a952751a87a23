"""How a 2-rank gloo worker ends without torch's rare C++ abort at interpreter exit.

The abort ("terminate called without an active exception", SIGABRT, exit code -6) was traced with core dumps
(gdb, torch 2.14.1 CPU, CPython 3.11): the main thread is in ``Py_FinalizeEx``; a gloo worker thread
(``c10d::ProcessGroupGloo::runLoop``) is still dropping a finished collective (``~AsyncAllreduceWork``) whose
tensor has a Python object, so it takes the GIL (``TensorImpl::decref_pyobject``); CPython < 3.14 ends a thread
that takes the GIL during finalization with ``pthread_exit``, whose forced unwind crosses a ``noexcept``
destructor, and libstdc++ calls ``std::terminate``. On a loaded machine the worker thread is often not scheduled
between the collective's completion (which wakes the main thread) and the interpreter's exit.

What avoids it: no gloo worker thread may outlive the interpreter's finalization. ``destroy_process_group`` joins
them only when it drops the last reference to the group; DDP (HF Trainer, accelerate, Lightning, DeepSpeed)
keeps the group alive even after the model is deleted, so there the threads survive until exit. :func:`leave`
meets the other ranks, destroys the group, and, if gloo threads are still alive, ends the process with
``os._exit`` after flushing (nothing else runs at exit in these workers).

Measured on the 2-core machine with 2 busy-loop hogs, ``torchrun --nproc_per_node 2`` of a script that does 3
``all_reduce`` of a Python tensor and then: exits plainly 7 aborts in 9 runs; ``destroy_process_group`` 0/15;
barrier + destroy 0/15; keeps a reference to the group (as DDP does) + barrier + destroy 5/14, interleaved with
keeps it + :func:`leave` 0/14. Seen alive after barrier + destroy (``/proc/self/task`` names): 2 gloo threads
in hf_trainer_worker (even after ``del trainer`` + ``gc.collect()``), in a plain DDP(nn.Linear) script after
``del model``, and on rank 0 of ``bestckpt evaluate|finalize`` under torchrun (no Python container references a
ProcessGroup there: the holder is on the C++ side, not found yet), which therefore ends the same way
(``bestckpt.cli.distributed.run_command``).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys

from bestckpt.cli.distributed import gloo_threads  # the CLI under torchrun ends the same way


def leave() -> None:
    """End the worker: barrier, destroy the process group; if its gloo threads survive, exit without finalizing."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    if gloo_threads() == 0:
        return  # the group is gone: a normal interpreter exit is safe
    children = multiprocessing.active_children()
    assert not children, f"worker still has child processes at exit: {children}"
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
