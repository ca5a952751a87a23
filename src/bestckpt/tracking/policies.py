"""Retention as a composition of small pure policies (after Orbax's preservation policies).

Nothing here touches the disk or imports anything of ours: a policy looks at a list of
:class:`Candidate` (one per checkpoint still on disk) and says which steps it keeps and why.
:class:`AnyOf` keeps a checkpoint when any of its policies does and returns one
:class:`Decision` per candidate, with every reason, so a dry run can explain itself.

Conventions (documented for users, pinned by tests):
- Ranking uses only *evaluated* candidates with a finite score; failed evaluations (NaN, inf,
  missing metric, an evaluation error) and not-yet-evaluated ones are never in the top-k.
- Direction is explicit (``higher_is_better``), never a sort with ``reverse=True``.
- Ties: the earlier step stays ahead (it was there first; a later checkpoint has to be better).
- Keep-latest is always part of :func:`retention_policy` (the resume point is never deleted,
  the trap of Orbax #526). "Latest" is the most recently saved checkpoint (highest ``seq``, the
  directory's save counter), not the highest step: a restarted or resumed run's newest checkpoint is
  its resume point, and one bogus huge step protects only itself.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Candidate",
    "Decision",
    "Policy",
    "TopK",
    "LatestN",
    "EveryNSteps",
    "Pinned",
    "PendingEvaluation",
    "AnyOf",
    "rank",
    "interval_from_info",
    "noise_margin",
    "select_best",
    "retention_policy",
]

#: A record's status: saved with an evaluation to come, saved only, scored, or failed (never best).
STATUSES = ("pending", "saved", "evaluated", "failed")


@dataclass(frozen=True)
class Candidate:
    """What a policy may look at: one checkpoint that is still on disk.

    ``score`` is the tracked metric of an evaluated checkpoint, or ``None`` when it has none
    that can be ranked (pending, saved-only, failed, non-finite). ``seq`` is its place in the save
    order (higher: saved later; 0 for records of older states, which then fall back to step order).
    ``interval`` is the score's stored confidence interval ``(lo, hi)`` (``None``: none stored), used only by
    the "better beyond noise" rule of :func:`select_best`.
    """

    step: int
    path: str
    status: str
    score: float | None = None
    time: float = 0.0
    seq: int = 0
    interval: tuple[float, float] | None = None

    @property
    def rankable(self) -> bool:
        return self.status == "evaluated" and self.score is not None and math.isfinite(self.score)


@dataclass(frozen=True)
class Decision:
    """Keep or delete one checkpoint, with the reasons (every keeping policy, or why none kept it)."""

    step: int
    path: str
    keep: bool
    reasons: tuple[str, ...]


class Policy(Protocol):
    """A retention rule: ``keep(candidates)`` maps each kept step to the reason it is kept."""

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]: ...


def _value(c: Candidate) -> float:
    """The score of a rankable candidate (callers filter on ``rankable`` first)."""
    assert c.score is not None, "only rankable candidates have a score"
    return c.score


def _sort_key(higher_is_better: bool) -> Callable[[Candidate], tuple[float, int]]:
    # Explicit direction; ties broken by the earlier step.
    if higher_is_better:
        return lambda c: (-_value(c), c.step)
    return lambda c: (_value(c), c.step)


def rank(candidates: Iterable[Candidate], higher_is_better: bool) -> list[Candidate]:
    """Rankable candidates, best first (ties: earlier step first)."""
    return sorted((c for c in candidates if c.rankable), key=_sort_key(higher_is_better))


def interval_from_info(info: Any, metric_name: str) -> tuple[float, float] | None:
    """The ``(lo, hi)`` an evaluation stored for ``metric_name`` in a record's ``info["intervals"]``, or None
    (older records, a metric without one, a malformed entry: never a made-up interval)."""
    raw = info.get("intervals") if isinstance(info, dict) else None
    pair = raw.get(metric_name) if isinstance(raw, dict) else None
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair):
        return None
    lo, hi = float(pair[0]), float(pair[1])
    return (lo, hi) if lo <= hi else None


def noise_margin(cand: Candidate, incumbent: Candidate, higher_is_better: bool) -> float | None:
    """How much ``cand`` must beat ``incumbent`` by to be better beyond noise: √(h_c² + h_i²), with h_c the
    candidate's half-interval on the side towards the incumbent and h_i the incumbent's towards the candidate
    (the 95% half-width of the difference of two independent estimates). None when either has no interval.

    The two evaluations use the same prompts and seeds, so their errors are positively correlated and the
    difference is less noisy than this: the rule is conservative (docs/intervals.md)."""
    if cand.interval is None or incumbent.interval is None:
        return None
    c, i = _value(cand), _value(incumbent)
    if higher_is_better:
        h_c, h_i = c - cand.interval[0], incumbent.interval[1] - i
    else:
        h_c, h_i = cand.interval[1] - c, i - incumbent.interval[0]
    return math.hypot(max(h_c, 0.0), max(h_i, 0.0))


def select_best(candidates: Iterable[Candidate], higher_is_better: bool, min_improvement: float = 0.0,
                beyond_noise: bool = False) -> Candidate | None:
    """The best checkpoint: replay rankable candidates in step order; one replaces the incumbent
    only if it is better by more than ``min_improvement`` (strictly better when 0, so ties keep
    the earlier step). With ``min_improvement == 0`` this is simply ``rank(...)[0]``.

    ``beyond_noise``: the margin is also at least :func:`noise_margin` (when both have intervals;
    without them only ``min_improvement`` applies)."""
    best: Candidate | None = None
    for cand in sorted((c for c in candidates if c.rankable), key=lambda c: c.step):
        if best is None:
            best = cand
            continue
        margin = min_improvement
        if beyond_noise:
            noise = noise_margin(cand, best, higher_is_better)
            margin = margin if noise is None else max(margin, noise)
        if higher_is_better and _value(cand) > _value(best) + margin:
            best = cand
        elif not higher_is_better and _value(cand) < _value(best) - margin:
            best = cand
    return best


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True)
class TopK:
    """The k best evaluated checkpoints by the tracked metric (``k == -1``: every evaluated one)."""

    k: int
    higher_is_better: bool = True
    metric_name: str = "score"

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        ranked = rank(candidates, self.higher_is_better)
        if self.k >= 0:
            ranked = ranked[: self.k]
        label = "all" if self.k < 0 else str(self.k)
        return {c.step: f"top-{label} #{i + 1} ({self.metric_name}={_fmt(_value(c))})" for i, c in enumerate(ranked)}


@dataclass(frozen=True)
class LatestN:
    """The n most recently saved checkpoints (highest ``(seq, step)``), whatever their status:
    the resume point."""

    n: int = 1

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        newest = sorted(((c.seq, c.step) for c in candidates), reverse=True)[: max(self.n, 0)]
        return {step: "latest" if self.n == 1 else f"latest-{self.n}" for _, step in newest}


@dataclass(frozen=True)
class EveryNSteps:
    """Checkpoints whose step is a multiple of n (the guide's one-every-10,000-steps)."""

    n: int | None = 10_000

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        if not self.n:
            return {}
        return {c.step: f"every {self.n} steps" for c in candidates if c.step % self.n == 0}


@dataclass(frozen=True)
class Pinned:
    """Explicitly listed steps (``reason`` says who pinned them: the user, ``best``, DeepSpeed ``latest``...)."""

    steps: frozenset[int] | tuple[int, ...] = ()
    reason: str = "pinned"

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        steps = set(self.steps)
        return {c.step: self.reason for c in candidates if c.step in steps}


@dataclass(frozen=True)
class PendingEvaluation:
    """Checkpoints saved with an evaluation still to come: protected until they are scored."""

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        return {c.step: "pending evaluation" for c in candidates if c.status == "pending"}


@dataclass(frozen=True)
class AnyOf:
    """Keep a checkpoint when any policy keeps it; every keeping policy contributes its reason."""

    policies: tuple[Policy, ...]

    def __init__(self, policies: Iterable[Policy]) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, candidates: Sequence[Candidate]) -> dict[int, str]:
        return {d.step: "; ".join(d.reasons) for d in self.decide(candidates) if d.keep}

    def decide(self, candidates: Sequence[Candidate]) -> list[Decision]:
        """One decision per candidate, in step order."""
        reasons: dict[int, list[str]] = {c.step: [] for c in candidates}
        for policy in self.policies:
            for step, why in policy.keep(candidates).items():
                reasons[step].append(why)
        return [
            Decision(c.step, c.path, bool(reasons[c.step]), tuple(reasons[c.step]) or (_why_not(c),))
            for c in sorted(candidates, key=lambda c: c.step)
        ]


def _why_not(c: Candidate) -> str:
    if c.status == "failed" or (c.status == "evaluated" and not c.rankable):
        return "evaluation failed (never ranked)"
    if c.status == "evaluated":
        return "outside the top-k"
    if c.status == "saved":
        return "not evaluated (saved only)"
    return "kept by no policy"


def retention_policy(
    *,
    save_top_k: int,
    higher_is_better: bool,
    metric_name: str = "score",
    keep_latest: int = 1,
    keep_every_n_steps: int | None = None,
    pinned_steps: Iterable[int] = (),
    best_step: int | None = None,
    protected: dict[int, str] | None = None,
) -> AnyOf:
    """The tracker's composition: best, top-k, latest (always, n >= 1), every-N, pinned, pending,
    plus ``protected`` steps with their own reasons (e.g. named by DeepSpeed's ``latest`` file)."""
    policies: list[Policy] = []
    if best_step is not None:
        policies.append(Pinned((best_step,), reason="best"))
    policies += [
        TopK(save_top_k, higher_is_better, metric_name),
        LatestN(max(1, keep_latest)),
        EveryNSteps(keep_every_n_steps),
        Pinned(tuple(pinned_steps), reason="pinned"),
        PendingEvaluation(),
    ]
    for step, why in (protected or {}).items():
        policies.append(Pinned((step,), reason=why))
    return AnyOf(policies)
