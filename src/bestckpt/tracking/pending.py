"""Pending checkpoints whose evaluation never comes: their age, staleness, and explicit release.

A ``pending`` checkpoint (saved, evaluation to come) is protected from pruning until it is scored.
If its evaluation never comes (the evaluator died, the schedule changed) it would stay protected
forever without a sign. bestckpt never un-protects it automatically: after
``TrackerConfig.pending_stale_after`` seconds (display only, never a deletion rule) ``bestckpt
status`` marks it stale and the writer's start warns; the user then evaluates it, or releases it
(:func:`release`: ``tracker.release(step)`` / ``bestckpt release DIR STEP...``), which turns it into
a ``saved`` checkpoint, prunable like any unevaluated one.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from bestckpt.errors import ConfigError
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.state import Record, TrackerState

__all__ = ["pending_age", "is_stale", "format_age", "warn_stale", "check_releasable", "release"]

logger = logging.getLogger(__name__)


def pending_age(rec: Record, now: float) -> float | None:
    """Seconds since ``rec`` became pending (its registration), or ``None`` if it is not pending."""
    if rec.status != "pending" or rec.pruned:
        return None
    return max(0.0, now - rec.time)


def is_stale(rec: Record, stale_after: float | None, now: float) -> bool:
    """Whether ``rec`` has been pending for longer than ``stale_after`` seconds (``None``: never)."""
    age = pending_age(rec, now)
    return age is not None and stale_after is not None and age > stale_after


def format_age(seconds: float) -> str:
    """``3.2 d``, ``5.0 h``, ``12.5 min`` or ``40 s``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def warn_stale(st: TrackerState, config: TrackerConfig, now: float | None = None) -> list[int]:
    """Log one warning naming the stale pending steps (they stay protected); returns them."""
    now = time.time() if now is None else now
    after = config.pending_stale_after
    stale = sorted(r.step for r in st.live() if is_stale(r, after, now))
    if stale:
        oldest = max(pending_age(st.records[s], now) or 0.0 for s in stale)
        shown = " ".join(map(str, stale[:10])) + (" ..." if len(stale) > 10 else "")
        logger.warning("stale pending checkpoints in %s: steps %s have waited for their evaluation longer than "
                       "pending_stale_after (%s; the oldest %s). They stay protected: evaluate them "
                       "(`bestckpt evaluate %s`), or stop protecting them with `bestckpt release %s %s`",
                       st.dir, stale[:10], format_age(after or 0.0), format_age(oldest), st.dir, st.dir, shown)
    return stale


def check_releasable(records: Mapping[int, Record], steps: Iterable[int], directory: Path) -> list[int]:
    """``steps`` without repeats, each a live pending record of ``records``; else
    :class:`~bestckpt.errors.ConfigError` naming the first step that is not, and the fix."""
    steps = list(dict.fromkeys(steps))
    if not steps:
        raise ConfigError("release needs at least one step; `bestckpt status DIR` lists the pending ones")
    for step in steps:
        rec = records.get(step)
        if rec is None:
            raise ConfigError(f"step {step} is not tracked in {directory}: nothing to release "
                              f"(`bestckpt status {directory}` lists the pending steps)")
        if rec.pruned:
            raise ConfigError(f"step {step} was already deleted (pruned: {rec.info.get('removed', 'retention')}); "
                              "nothing to release")
        if rec.status != "pending":
            raise ConfigError(f"step {step} is {rec.status}, not pending; only pending checkpoints can be released "
                              f"(`bestckpt status {directory}` lists them)")
    return steps


def release(st: TrackerState, steps: Iterable[int], now: float | None = None) -> list[Record]:
    """Turn the pending records of ``steps`` into ``saved`` ones (all or none: :func:`check_releasable`
    first), logging each."""
    now = time.time() if now is None else now
    released = []
    for step in check_releasable(st.records, steps, st.dir):
        rec = st.records[step]
        new = dataclasses.replace(rec, status="saved", info=dict(rec.info, released=now))
        st.put(new)
        released.append(new)
        logger.info("released step %d (%s) from pending evaluation after %s: it is now prunable like any "
                    "unevaluated checkpoint", step, rec.path, format_age(pending_age(rec, now) or 0.0))
    return released
