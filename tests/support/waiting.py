"""Waiting in tests without depending on timing: events, lines, recorded state; every wait bounded.

A test waits for something that *happens* (a line a process prints, a message a worker sends, a
lock a test releases, a value the tracker records), never for a duration, and never by watching a
file appear. Each wait has a generous bound (minutes) that only fails the test when the thing
never happens; nothing here asserts how long anything took.

- :func:`wait_for_state`: poll *recorded* state (read through an API) until a predicate holds.
  The one helper of the suite allowed to sleep in a loop (``tests/architecture/test_no_timing.py``).
- :class:`LineWaiter`: the lines a subprocess prints, read by a thread (optionally copied to a log
  file); :meth:`LineWaiter.wait_for` returns the first line that matches.
- :class:`Beacon` / :func:`beacon_send`: a named pipe another process (a spawned worker, a CLI
  subprocess) writes one line into when something happens inside it; the test reads that line.
- :class:`Gate` / :func:`gate_wait`: a file lock the test holds while another process must not go
  on; :meth:`Gate.open` lets every waiter (now and later) through.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

__all__ = ["DEFAULT_TIMEOUT", "wait_for_state", "LineWaiter", "Beacon", "beacon_send", "Gate", "gate_wait"]

T = TypeVar("T")

#: bound of every wait: long enough for a loaded 2-core machine, short enough that a hang is reported
DEFAULT_TIMEOUT = 300.0


def wait_for_state(read: Callable[[], T], predicate: Callable[[T], bool], *, timeout: float = DEFAULT_TIMEOUT,
                   interval: float = 0.05, what: str = "the recorded state") -> T:
    """``read()`` again and again (``interval`` apart) until ``predicate(value)``; returns that value.

    ``read`` must return recorded state (a tracker's records, a process's exit status), never a
    file's existence. Raises ``AssertionError`` naming ``what`` and the last value if ``timeout``
    seconds pass first: the thing never happened.
    """
    end = time.monotonic() + timeout
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{what} never came within {timeout:.0f} s; last value read: {value!r}")
        time.sleep(interval)


class LineWaiter:
    """Every line a subprocess writes to ``stream`` (its stdout pipe), collected by a daemon thread.

    ``log`` (a path) also receives every line as it arrives, for the test's failure messages.
    """

    def __init__(self, stream: IO[str], log: str | os.PathLike[str] | None = None) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._log = open(log, "w", encoding="utf-8") if log is not None else None  # noqa: SIM115
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()
            if self._log is not None:
                self._log.close()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, match: str | Callable[[str], bool], *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The first line containing ``match`` (or satisfying it, if callable); ``AssertionError``
        if the stream ends or ``timeout`` passes without one."""
        test = (lambda line: match in line) if isinstance(match, str) else match
        seen = 0
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if test(line):
                        return line
                seen = len(self.lines)
                if self.closed:
                    raise AssertionError(f"the process ended without printing {match!r}:\n{self.text_tail()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line {match!r} within {timeout:.0f} s:\n{self.text_tail()}")
                self._cond.wait(left)

    def text_tail(self, chars: int = 3000) -> str:
        return "".join(self.lines)[-chars:]

    def join(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait until the stream ends (the process closed its stdout); returns everything read."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the process's output did not end within {timeout:.0f} s")
        return self.text


class Beacon:
    """A named pipe at ``path`` that other processes send lines into (:func:`beacon_send`).

    The test keeps both ends open (so a sender never blocks and the pipe never reports end of
    file); :meth:`wait_line` returns the next line sent.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self._buf = b""

    def wait_line(self, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"nothing was sent to {self.path} within {timeout:.0f} s")
            try:
                self._buf += os.read(self._fd, 4096)
            except BlockingIOError:
                continue
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8")

    def close(self) -> None:
        os.close(self._fd)


def beacon_send(path: str | os.PathLike[str], line: str) -> None:
    """Send ``line`` to the :class:`Beacon` at ``path``; silently nothing if no test listens."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # nobody listening any more
            return
        raise
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    except BlockingIOError:  # a full pipe: the test stopped reading
        pass
    finally:
        os.close(fd)


class Gate:
    """A file lock held by the test: :func:`gate_wait` in another process blocks until :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def open(self) -> None:
        """Let every waiter through, now and later."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def gate_wait(path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Block until the :class:`Gate` at ``path`` is open; ``TimeoutError`` after ``timeout`` seconds."""
    fd = os.open(path, os.O_RDONLY)
    passed = threading.Event()

    def take() -> None:
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks while the test holds LOCK_EX
        passed.set()

    threading.Thread(target=take, daemon=True).start()
    if not passed.wait(timeout):  # the thread keeps its descriptor: closing it under flock is unsafe
        raise TimeoutError(f"the gate {path} stayed closed for {timeout:.0f} s")
    os.close(fd)
