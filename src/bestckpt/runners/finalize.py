"""The guide's last step, "evaluate the best checkpoints further and choose": ``bestckpt finalize``.

:func:`finalize` re-scores the *finalists* (:func:`select_finalists`: the top-k by the training protocol, any
checkpoint whose interval overlaps the best's, and the current best) under a larger protocol (given, or
:func:`derive_protocol`: more seeds per prompt), stores those scores in each record's ``info["final"]`` under
the larger protocol's hash (never in its ``metrics``: the training protocol keeps ranking the top-k), and
moves ``best.pt`` only to a *confirmed* winner (:func:`decide`): the finalists' leader under the larger
protocol must beat the current best by more than the noise of both scores (the same margin as
``best_beyond_noise``: :func:`~bestckpt.tracking.policies.noise_margin`); otherwise the current best is kept,
and the decision says why. The decision is logged, written atomically to ``finalize.json`` in the checkpoint
directory (``bestckpt status`` shows it), and marks the chosen record, which then outranks every ordinary
score (:mod:`bestckpt.tracking.finalized`): a later evaluation under the training protocol cannot move
``best.pt`` back; only another finalize can.

Finalists stay on disk: while finalize runs (and after an interruption, until it is rerun or abandoned:
``bestckpt finalize DIR --abandon``, :func:`~bestckpt.tracking.finalized.abandon`) they carry a ``finalizing``
mark that retention treats as a pin. Interrupted, it resumes: finalists already scored under the larger protocol
(same save) are not scored again. Offline: it needs only the checkpoints, the protocol
files and the sampler.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt import fsio
from bestckpt.tracking.finalized import final_of, running_lock
from bestckpt.tracking.policies import Candidate, interval_from_info, noise_margin, rank
from bestckpt.tracking.state import Record

if TYPE_CHECKING:
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.runners.evaluator import Evaluator
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["DECISION_FILE", "FinalDecision", "decide", "derive_protocol", "finalize", "read_decision",
           "select_finalists"]

logger = logging.getLogger(__name__)

#: the last decision, beside the state
DECISION_FILE = "finalize.json"


def derive_protocol(protocol: Protocol, samples_factor: int) -> Protocol:
    """``protocol`` with ``samples_factor`` times the samples: the same prompts, each with more seeds (sample ``i``
    keeps prompt ``i % P`` and seed ``derive_seed(seed, i)``, so the training protocol's samples are its first ones)."""
    if not isinstance(samples_factor, int) or isinstance(samples_factor, bool) or samples_factor < 2:
        raise ValueError(f"samples_factor={samples_factor!r}: must be an integer >= 2 (a larger protocol), e.g. 4")
    return dataclasses.replace(protocol, num_samples=protocol.num_samples * samples_factor,
                               name=f"{protocol.name}-final-x{samples_factor}")


def _overlaps(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def select_finalists(records: Sequence[Record], metric_name: str, higher_is_better: bool, top_k: int,
                     best_step: int | None) -> list[Record]:
    """The live evaluated records to re-score: the ``top_k`` best by their (training) score (``-1``: all), any
    whose stored interval overlaps the training leader's, and the current best ``best_step``; by step."""
    live = {r.step: r for r in records if not r.pruned and r.score(metric_name) is not None}
    cands = [Candidate(r.step, r.path, r.status, r.score(metric_name), r.time, r.seq,
                       interval_from_info(r.info, metric_name)) for r in live.values()]
    ranked = rank(cands, higher_is_better)
    chosen = {c.step for c in (ranked if top_k < 0 else ranked[:top_k])}
    if ranked:
        lead = ranked[0].interval
        chosen |= {c.step for c in ranked if _overlaps(c.interval, lead)}
    if best_step in live:
        chosen.add(best_step)
    return [live[s] for s in sorted(chosen)]


@dataclasses.dataclass(frozen=True)
class FinalDecision:
    """What finalize decided and why (``finalize.json``; ``finalists``: step, path, training score, final score,
    interval)."""

    protocol_hash: str
    protocol_name: str
    num_samples: int
    metric_name: str
    higher_is_better: bool
    finalists: list[dict[str, Any]]
    incumbent: int | None
    leader: int | None
    chosen: int | None
    confirmed: bool
    moved: bool
    reason: str
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"schema": "bestckpt.finalize/1", **dataclasses.asdict(self)}


def decide(scored: Sequence[Candidate], incumbent: int | None, higher_is_better: bool) -> tuple[
        int | None, int | None, bool, str]:
    """``(chosen, leader, confirmed, reason)`` from the finalists' scores under the larger protocol.

    The leader is the best of ``scored`` (ties: the incumbent, then the earlier step). It replaces the
    ``incumbent`` only when better by more than :func:`~bestckpt.tracking.policies.noise_margin` (both
    need intervals; without them nothing is confirmed); otherwise the incumbent is kept."""
    ranked = sorted((c for c in scored if c.rankable),
                    key=lambda c: (-c.score if higher_is_better else c.score, c.step != incumbent, c.step))  # type: ignore[operator]
    if not ranked:
        return incumbent, None, False, "no finalist could be scored under the larger protocol: the current best stays"
    leader = ranked[0]
    if incumbent is None:
        return leader.step, leader.step, True, f"no current best: step {leader.step} leads the finalists"
    if leader.step == incumbent:
        return incumbent, leader.step, True, (f"the current best (step {incumbent}) also leads under the larger "
                                              "protocol")
    current = next((c for c in ranked if c.step == incumbent), None)
    if current is None:
        return incumbent, leader.step, False, (f"step {leader.step} leads, but the current best (step {incumbent}) "
                                               "could not be scored under the larger protocol: nothing to compare "
                                               "with, the current best stays")
    margin = noise_margin(leader, current, higher_is_better)
    diff = abs(float(leader.score) - float(current.score))  # type: ignore[arg-type]
    if margin is None:
        return incumbent, leader.step, False, (f"step {leader.step} leads by {diff:.6g}, but the scores have no "
                                               "intervals, so the lead cannot be told from noise: the current best "
                                               f"(step {incumbent}) stays")
    if diff > margin:
        return leader.step, leader.step, True, (f"step {leader.step} beats the current best (step {incumbent}) by "
                                                f"{diff:.6g}, beyond the noise margin {margin:.6g}: confirmed")
    return incumbent, leader.step, False, (f"step {leader.step} leads by {diff:.6g}, within the noise margin "
                                           f"{margin:.6g}: not confirmed, the current best (step {incumbent}) stays")


def _final_candidate(rec: Record, protocol_hash: str, metric_name: str) -> Candidate | None:
    entry = (final_of(rec).get("scores") or {}).get(protocol_hash)
    if not isinstance(entry, dict):
        return None
    value = (entry.get("metrics") or {}).get(metric_name)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    interval = interval_from_info(entry, metric_name)
    return Candidate(rec.step, rec.path, "evaluated", float(value), rec.time, rec.seq, interval)


def _records(tracker: BestCheckpointTracker) -> dict[int, Record]:
    return {r.step: r for r in tracker.records if not r.pruned}


def _score_finalists(tracker: BestCheckpointTracker, evaluator: Evaluator, steps: Sequence[int]) -> int:
    """Score every finalist not yet scored under the evaluator's protocol; each score is stored at once (resume).
    Returns how many failed."""
    phash, metric = evaluator.protocol.hash, tracker.metric_name
    failed = 0
    for step in steps:
        rec = _records(tracker).get(step)
        if rec is None:
            logger.warning("finalist step %d is gone; it is left out", step)
            continue
        if _final_candidate(rec, phash, metric) is not None:
            logger.info("finalist step %d already scored under protocol %s (resumed): skipped", step, phash[:12])
            continue
        result = evaluator.evaluate(step, tracker.dir / rec.path)
        value = result.scores.get(metric) if result.ok else None
        if value is None or not math.isfinite(value):
            failed += 1
            logger.error("finalist step %d could not be scored under protocol %s (%s); it is left out of the "
                         "decision", step, phash[:12], result.error or f"no finite {metric}")
            continue
        entry = {"metrics": dict(result.scores), "time": time.time(), "num_samples": result.num_samples,
                 "intervals": {k: [lo, hi] for k, (lo, hi) in result.intervals.items()}}
        marks = final_of(_records(tracker).get(step, rec))
        marks["scores"] = {**(marks.get("scores") or {}), phash: entry}
        tracker.set_final({step: marks})
        logger.info("finalist step %d: %s = %.6g under protocol %s", step, metric, value, phash[:12])
    return failed


def finalize(tracker: BestCheckpointTracker, evaluator: Evaluator, *, top_k: int | None = None) -> FinalDecision:
    """Re-score the finalists with ``evaluator`` (built with the larger protocol), decide, record, explain.

    ``top_k``: how many of the training ranking's best are finalists (default: the run's ``save_top_k``). Every
    rank of a distributed run calls it alike (as :meth:`Evaluator.evaluate` requires); only the writer records.
    The writer holds the directory's finalize lock throughout (:func:`~bestckpt.tracking.finalized.running_lock`):
    a second finalize, or ``--abandon``, refuses while this one runs."""
    with running_lock(tracker.dir) if tracker.is_writer else contextlib.nullcontext():
        return _finalize(tracker, evaluator, top_k)


def _finalize(tracker: BestCheckpointTracker, evaluator: Evaluator, top_k: int | None) -> FinalDecision:
    protocol, metric, hib = evaluator.protocol, tracker.metric_name, tracker.higher_is_better
    best = tracker.best
    incumbent = None if best is None else best.step
    finalists = select_finalists(tracker.records, metric, hib, tracker.save_top_k if top_k is None else top_k,
                                 incumbent)
    steps = [r.step for r in finalists]
    logger.info("finalize: %d finalist(s) %s under protocol %s (%d samples); current best: step %s", len(steps),
                steps, protocol.short_hash, protocol.num_samples, incumbent)
    now = time.time()
    tracker.set_final({r.step: {**final_of(r), "finalizing": now} for r in finalists})  # pinned while we run
    _score_finalists(tracker, evaluator, steps)
    records = _records(tracker)
    scored = [c for c in (_final_candidate(records[s], protocol.hash, metric) for s in steps if s in records) if c]
    chosen, leader, confirmed, reason = decide(scored, incumbent, hib)
    marks: dict[int, dict[str, Any] | None] = {}
    for rec in records.values():  # unpin the finalists; only the chosen one keeps (or gets) the choice
        entry = final_of(rec)
        if rec.step in steps or "chosen" in entry:
            entry.pop("finalizing", None)
            entry.pop("chosen", None)
            if rec.step == chosen:
                entry["chosen"] = now
            marks[rec.step] = entry or None
    tracker.set_final(marks)
    by_step = {c.step: c for c in scored}
    table = []
    for s in steps:
        cand = by_step.get(s)
        table.append({"step": s, "path": records[s].path if s in records else None,
                      "training_score": records[s].score(metric) if s in records else None,
                      "final_score": None if cand is None else cand.score,
                      "final_interval": None if cand is None or cand.interval is None else list(cand.interval)})
    decision = FinalDecision(protocol.hash, protocol.name, protocol.num_samples, metric, hib, table, incumbent,
                             leader, chosen, confirmed, chosen != incumbent, reason, now)
    if tracker.is_writer:
        fsio.atomic_write_json(tracker.dir / DECISION_FILE, decision.to_json(), indent=1)
    for row in table:
        logger.info("finalize: step %s  training %s=%s  final %s=%s %s", row["step"], metric, row["training_score"],
                    metric, row["final_score"], row["final_interval"] or "")
    logger.info("finalize: %s%s", reason, f"; best.pt -> step {chosen}" if decision.moved else "")
    return decision


def read_decision(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The last ``finalize.json`` of ``checkpoint_dir`` (``None``: finalize never ran, or the file is unreadable)."""
    import json

    path = Path(checkpoint_dir) / DECISION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
