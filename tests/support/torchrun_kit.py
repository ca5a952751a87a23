"""Run multi-process commands (torchrun, 2 ranks, real torch.distributed), failing with both outputs.

The rare abort ``TORCH_ABORT`` (SIGABRT, exit code -6) is torch's, at interpreter exit: a ProcessGroupGloo worker
thread still dropping a finished collective takes the GIL while CPython finalizes, CPython (< 3.14) ends it with
``pthread_exit``, and the unwind through a ``noexcept`` destructor calls ``std::terminate`` (gdb backtraces, rates
and the way out: ``dist_exit.py``). Workers end with ``dist_exit.leave()``; the rerun stays for other scripts
(examples, ``accelerate launch``) that do not."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent

#: a rank aborting inside torch's C++ at interpreter exit (rare under heavy CPU load; cause: dist_exit.py)
TORCH_ABORT = "terminate called without an active exception"


def run_checked(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None,
                fresh: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (bounded by ``timeout``); one rerun after the known C++ abort; assert it succeeded.

    ``fresh``: called before the rerun to put back what the command starts from (e.g. remove its output
    folder), so the rerun is the same run, not a resume of the aborted one."""
    env = {**env, "PYTHONFAULTHANDLER": "1"}  # an abort prints every thread's Python stack: where it happened
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0 and TORCH_ABORT in proc.stderr:
        first = proc.stderr[-2000:]
        # shown in pytest's warnings summary even when the rerun passes: the abort's stacks, for its cause
        warnings.warn(f"rerun after torch's C++ abort of {cmd[-2:]}; first run's stderr:\n{proc.stderr[-6000:]}",
                      stacklevel=2)
        if fresh is not None:
            fresh()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        assert proc.returncode == 0, first + "\n--- rerun ---\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def run_script(script: str, work: Path, backend: str = "gloo", timeout: float = 240) -> None:
    """``torchrun --standalone --nproc_per_node 2 tests/support/SCRIPT WORK``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", BESTCKPT_TEST_BACKEND=backend, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS_DIR / script), str(work)]
    run_checked(cmd, env, timeout)
