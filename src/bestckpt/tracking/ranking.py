"""The ranking of a tracker's live records, maintained incrementally between calls.

A tracker call changes one or two records, but with ``save_top_k=-1`` thousands stay live, and
rebuilding every :class:`~bestckpt.tracking.policies.Candidate` and re-sorting them at each call would
be O(n log n) Python work per call. :class:`Ranking` keeps one candidate per live step and the
rankable ones as a sorted list of ``(key, step)`` (key: the score with its direction made
explicit, ties broken by the earlier step, exactly :func:`bestckpt.tracking.policies.rank`'s order),
and updates both from the steps :class:`~bestckpt.tracking.state.TrackerState` says were touched.
Results are the pure policies' answers: :func:`~bestckpt.tracking.policies.select_best` is used as is
when ``min_improvement > 0`` or ``best_beyond_noise`` (otherwise it is, by definition, the ranking's head).
A checkpoint ``bestckpt finalize`` chose outranks them all (:mod:`~bestckpt.tracking.finalized`).
No disk access here.
"""
from __future__ import annotations

import bisect
from typing import Any

from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.finalized import choice_time
from bestckpt.tracking.policies import Candidate, interval_from_info, select_best
from bestckpt.tracking.state import Record, TrackerState

__all__ = ["Ranking"]


class Ranking:
    """Candidates, best step and top-k of ``st``'s live records under ``config``'s metric."""

    def __init__(self, st: TrackerState, config: TrackerConfig) -> None:
        self._st = st
        self._config = config
        self._generation: int | None = None
        self._cands: dict[int, Candidate] = {}
        self._ranked: list[tuple[float, int]] = []  # (signed score, step), best first
        self._version: int | None = None
        self._memo: dict[str, Any] = {}
        # live steps by status (for summaries), and the ones neither rankable nor pending
        self._by_status: dict[str, set[int]] = {}
        self._unranked_failed: set[int] = set()  # evaluated without a finite tracked value
        self._loose: set[int] = set()
        self._chosen: dict[int, float] = {}  # step -> when finalize chose it (finalized.choice_time)

    # ------------------------------------------------------------------ maintenance
    def _key(self, cand: Candidate) -> tuple[float, int]:
        assert cand.score is not None
        return (-cand.score if self._config.higher_is_better else cand.score, cand.step)

    def _sync(self) -> None:
        st = self._st
        if self._version == st.version:
            return
        if self._generation != st.generation:
            st.take_touched()
            self._generation = st.generation
            self._cands = {s: self._candidate(st.records[s]) for s in st.live_steps}
            self._ranked = sorted(self._key(c) for c in self._cands.values() if c.rankable)
            self._by_status, self._unranked_failed, self._loose, self._chosen = {}, set(), set(), {}
            for cand in self._cands.values():
                self._index(cand)
        else:
            for step in st.take_touched():
                old = self._cands.pop(step, None)
                if old is not None:
                    self._unindex(old)
                    if old.rankable:
                        key = self._key(old)
                        i = bisect.bisect_left(self._ranked, key)
                        assert self._ranked[i] == key
                        del self._ranked[i]
                if step in st.live_steps:
                    cand = self._candidate(st.records[step])
                    self._cands[step] = cand
                    self._index(cand)
                    if cand.rankable:
                        bisect.insort(self._ranked, self._key(cand))
        self._version = st.version
        self._memo = {}

    def _index(self, cand: Candidate) -> None:
        self._by_status.setdefault(cand.status, set()).add(cand.step)
        chosen = choice_time(self._st.records[cand.step])
        if chosen is not None:
            self._chosen[cand.step] = chosen
        if not cand.rankable:
            if cand.status == "evaluated":
                self._unranked_failed.add(cand.step)
            if cand.status != "pending":
                self._loose.add(cand.step)

    def _unindex(self, cand: Candidate) -> None:
        self._by_status[cand.status].discard(cand.step)
        self._unranked_failed.discard(cand.step)
        self._loose.discard(cand.step)
        self._chosen.pop(cand.step, None)

    def _candidate(self, r: Record) -> Candidate:
        name = self._config.metric_name
        interval = interval_from_info(r.info, name) if self._config.best_beyond_noise else None
        return Candidate(r.step, r.path, r.status, r.score(name), r.time, r.seq, interval)

    def _memoized(self, key: str, compute: Any) -> Any:
        self._sync()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # ------------------------------------------------------------------ answers
    def candidates(self) -> list[Candidate]:
        """One candidate per live record (what the retention policies look at)."""
        return self._memoized("candidates", lambda: list(self._cands.values()))

    def best_step(self) -> int | None:
        def compute() -> int | None:
            if self._chosen:  # finalize's decision outranks every ordinary score; the latest choice wins
                return max(self._chosen, key=lambda s: (self._chosen[s], s))
            if self._config.min_improvement == 0 and not self._config.best_beyond_noise:
                return self._ranked[0][1] if self._ranked else None
            best = select_best(self._cands.values(), self._config.higher_is_better, self._config.min_improvement,
                               beyond_noise=self._config.best_beyond_noise)
            return None if best is None else best.step

        return self._memoized("best", compute)

    def ranked_steps(self) -> list[int]:
        """Every rankable live step, best first (ties: earlier step first)."""
        return self._memoized("ranked", lambda: [s for _, s in self._ranked])

    def count(self) -> int:
        """How many records the top-k holds (``len(self.head())`` without building it)."""
        self._sync()
        k = self._config.save_top_k
        return len(self._ranked) if k < 0 else min(k, len(self._ranked))

    def head(self, limit: int | None = None) -> list[Record]:
        """The top-k records, best first (the best leads even when ``min_improvement`` kept it over
        a slightly higher score), at most ``limit`` of them."""
        n = self.count() if limit is None else min(limit, self.count())
        best = self.best_step()
        if best is None:
            return []
        steps = [best]
        for _, step in self._ranked:
            if len(steps) >= n:
                break
            if step != best:
                steps.append(step)
        return [self._st.records[s] for s in steps[:n]]

    def with_status(self, status: str) -> set[int]:
        """Live steps whose record has ``status`` (do not modify)."""
        self._sync()
        return self._by_status.get(status, set())

    def failed_steps(self) -> list[int]:
        """Live steps that can never be ranked: failed, or evaluated without a finite tracked value."""
        self._sync()
        return sorted(self._by_status.get("failed", set()) | self._unranked_failed)

    def may_delete(self) -> bool:
        """Whether any live checkpoint is neither in the top-k nor pending evaluation.

        :func:`~bestckpt.tracking.policies.retention_policy` always contains ``TopK(save_top_k)`` and
        ``PendingEvaluation``, which keep exactly the other ones: when this is ``False`` every
        retention decision is *keep*, so a commit can skip computing them (with ``save_top_k=-1``
        and every checkpoint evaluated, that is every call).
        """
        self._sync()
        k = self._config.save_top_k
        return bool(self._loose) or (k >= 0 and len(self._ranked) > k)
