"""Timing helper shared by the benchmarks (they run as scripts: bench/ is on sys.path)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """``(value, best seconds)`` of ``fn()`` over ``repeat`` calls (the last call's value)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return value, best  # type: ignore[return-value]
