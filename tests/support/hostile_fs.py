"""Helpers of the hostile-directory tests (tests/hostile/test_special_files.py, test_planted_links.py).

Every tracker call that could hang (a FIFO opened for reading) or read without bound (a symlink to
``/dev/zero``) runs in a subprocess with a wall-clock timeout and an address-space limit, so a
regression fails the test instead of hanging the suite or exhausting the machine's memory.

- :func:`run_tracker`: run a snippet of Python against a checkpoint directory ``D`` in a subprocess;
  returns an :class:`Outcome` (whether it raised, the exception's class, bases and message, the log).
- :func:`run_cli`: ``python -m bestckpt ...`` in a subprocess, bounded the same way.
- :func:`tree_digest`: what a directory holds (types, bytes, link targets), never following links:
  compare before/after to prove nothing outside the checkpoint directory changed.
- :func:`make_run`: a small run (checkpoint files, scores) written by an ordinary tracker.
- :func:`assert_clear`: an error names the file and says how to fix it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Outcome", "Sandbox", "run_tracker", "run_cli", "tree_digest", "make_run", "assert_clear",
           "assert_cli_clear", "pointed", "json_status", "SRC", "TIMEOUT_S", "MEMORY_LIMIT"]

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT_S = 60  # generous: the machine may be loaded; a hang runs into it, a healthy call takes < 1 s
MEMORY_LIMIT = 1 << 30  # address space of the subprocess: an unbounded read fails fast instead of swapping
_MARK = "@@OUTCOME@@"

_PRELUDE = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
import json, logging, os
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
from bestckpt.tracking.tracker import BestCheckpointTracker
D = Path(sys.argv[1])
result = None
def write(step, text=None):
    p = D / f"{{step:07d}}.pt"
    p.write_text(text if text is not None else f"weights {{step}}")
    return p
try:
    exec(compile(sys.argv[2], "<hostile>", "exec"))
    out = {{"ok": True, "result": result}}
except BaseException as exc:
    out = {{"ok": False, "type": type(exc).__name__, "bases": [c.__name__ for c in type(exc).__mro__],
           "message": str(exc)}}
sys.stdout.write("\\n{_MARK}" + json.dumps(out, default=repr) + "\\n")
"""


@dataclasses.dataclass
class Outcome:
    ok: bool
    result: Any
    type: str | None
    bases: list[str]
    message: str
    log: str  # the subprocess's stderr: log lines (WARNING ...) and tracebacks

    def __str__(self) -> str:
        head = "ok" if self.ok else f"{self.type}: {self.message}"
        return f"{head}\n--- log ---\n{self.log[-4000:]}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("BESTCKPT_LOG_LEVEL", None)
    return env


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_tracker(directory: Path, code: str, *, timeout: float = TIMEOUT_S) -> Outcome:
    """Run ``code`` (``D`` is the checkpoint directory, ``BestCheckpointTracker`` imported, ``write(step)``
    writes a checkpoint file; assign ``result`` to return a JSON-able value) in a bounded subprocess."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PRELUDE, str(directory), code], capture_output=True,
                              text=True, timeout=timeout, env=_env(), errors="replace")
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None:
        pytest.fail(f"tracker call hung (> {timeout} s):\n{code}")
    marker = proc.stdout.rfind(_MARK)
    if marker < 0:
        pytest.fail(f"the subprocess died (rc {proc.returncode}) without an outcome:\n{code}\n"
                    f"--- stderr ---\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout[marker + len(_MARK):])
    return Outcome(ok=out["ok"], result=out.get("result"), type=out.get("type"), bases=out.get("bases", []),
                   message=out.get("message", ""), log=proc.stderr)


def run_cli(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python -m bestckpt ARGS`` in a bounded subprocess (output: stdout + stderr together)."""
    try:
        return subprocess.run([sys.executable, "-m", "bestckpt", "--log-level", "WARNING", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              env=dict(_env(), COLUMNS="200"), preexec_fn=_limit_memory, errors="replace")
    except subprocess.TimeoutExpired:
        pass
    pytest.fail(f"`bestckpt {' '.join(args)}` hung (> {timeout} s)")


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path -> what it is`` for every entry under ``root`` (symlinks never followed)."""
    out: dict[str, str] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = "file:" + hashlib.sha256(full.read_bytes()).hexdigest() + f":{st.st_mtime_ns}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = f"special:{stat.S_IFMT(st.st_mode)}"
    return out


def make_run(directory: Path, scores: dict[int, float], *, save_top_k: int = 3, **kwargs: Any) -> None:
    """A run scored in step order by an ordinary tracker (in this process: nothing hostile yet)."""
    from bestckpt.tracking.tracker import BestCheckpointTracker

    directory.mkdir(parents=True, exist_ok=True)
    tracker = BestCheckpointTracker(directory, save_top_k=save_top_k, keep_every_n_steps=None, **kwargs)
    for step, score in scores.items():
        path = directory / f"{step:07d}.pt"
        path.write_text(f"weights {step}")
        tracker.update_checkpoint(step, None, path, {"composite_score": score})


_FIX = re.compile(r"\b(move|remove|rename|delete|replace)\b.*\b(it|them|away|aside)\b", re.IGNORECASE)


def assert_clear(outcome: Outcome, name: str) -> None:
    """The call failed with one of bestckpt's errors, whose message names ``name`` and the fix."""
    assert not outcome.ok, f"expected a clear error about {name}, the call succeeded\n{outcome}"
    assert "BestckptError" in outcome.bases, f"not a bestckpt error: {outcome}"
    assert name in outcome.message, f"the message does not name {name!r}: {outcome}"
    assert _FIX.search(outcome.message), f"the message does not say how to fix it: {outcome}"


def assert_cli_clear(proc: subprocess.CompletedProcess[str], name: str) -> None:
    """A command failed (exit code != 0) and its output names ``name`` and the fix."""
    assert proc.returncode != 0, proc.stdout
    assert name in proc.stdout and _FIX.search(proc.stdout), proc.stdout


def pointed(link: Path) -> str | None:
    """Where ``best.pt`` points (its symlink target), ``None`` when it is not a symlink."""
    return os.readlink(link) if os.path.islink(link) else None


def json_status(directory: Path) -> dict[str, Any]:
    """``bestckpt status --json DIR`` (must succeed)."""
    proc = run_cli("status", "--json", str(directory))
    assert proc.returncode == 0, proc.stdout
    start = re.search(r"^\{", proc.stdout, re.MULTILINE)
    assert start is not None, proc.stdout
    return json.loads(proc.stdout[start.start():])


class Sandbox:
    """``tmp_path/run`` (the checkpoint directory) beside ``tmp_path/outside`` (files a hostile
    directory may point at: they must never change)."""

    def __init__(self, tmp_path: Path) -> None:
        self.run = tmp_path / "run"
        self.outside = tmp_path / "outside"
        self.run.mkdir()
        self.outside.mkdir()
        (self.outside / "victim.txt").write_text("precious data outside the checkpoint directory\n")
        (self.outside / "blob.bin").write_bytes(bytes(range(256)) * 64)
        (self.outside / "dir").mkdir()
        (self.outside / "dir" / "inside.txt").write_text("also precious\n")
        self._before: dict[str, str] | None = None

    def freeze(self) -> None:
        """Remember what is outside now (call after planting links into it)."""
        self._before = tree_digest(self.outside)

    def assert_outside_unchanged(self) -> None:
        assert self._before is not None, "call freeze() first"
        assert tree_digest(self.outside) == self._before, "something outside the checkpoint directory changed"
