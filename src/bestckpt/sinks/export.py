"""Replay a run's recorded evaluations into sinks (``bestckpt export``): the same content as live logging.

The records come from the checkpoint directory's state (``best_checkpoints.json`` with its journal), in the
order they were recorded; each becomes the :class:`~bestckpt.sinks.base.EvaluationEvent` the live run sent
(scores, intervals, protocol id, weights, the images in ``evaluation_samples/``), with ``is_best`` as it was
when the record was made (the tracker's best rule replayed over the records made up to then). Then the new
best pointer and, at the end, the summary and ``best_checkpoint_results.json``. Use it when a tracker service
was down during training, or to add a sink after the fact.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bestckpt.sinks.base import EvaluationEvent, SinkSpec, make_sinks

__all__ = ["ExportResult", "export_run", "recorded_events"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` sent: evaluations, of which failed, and the sinks that gave up (their errors)."""

    evaluations: int
    failed: int
    sink_errors: dict[str, str]


def _best_at_record_time(records: Sequence[Any], mine: Any, tracker: Any) -> bool:
    """Whether ``mine`` was the best when it was recorded (same rule as
    :func:`bestckpt.integrations.loop.best_when_recorded`, which the live path uses)."""
    from bestckpt.tracking.policies import Candidate, interval_from_info, select_best

    name = tracker.metric_name
    if mine.score(name) is None:
        return False
    earlier = [Candidate(r.step, r.path, r.status, r.score(name), r.time, interval=interval_from_info(r.info, name))
               for r in records if r.score(name) is not None and r.time <= mine.time]
    best = select_best(earlier, tracker.higher_is_better, tracker.config.min_improvement,
                       beyond_noise=tracker.config.best_beyond_noise)
    return best is not None and best.step == mine.step


def recorded_events(checkpoint_dir: str | Path, samples_dir: str | Path | None = None) -> list[EvaluationEvent]:
    """The evaluation events of a run, in recording order (evaluated and failed records; pending ones are skipped)."""
    from bestckpt.tracking.journal import read_state
    from bestckpt.tracking.tracker import BestCheckpointTracker

    directory = Path(checkpoint_dir)
    if read_state(directory) is None:
        raise FileNotFoundError(f"{directory} has no bestckpt state (best_checkpoints.json); pass the checkpoint "
                                f"directory of a run that bestckpt tracked")
    tracker = BestCheckpointTracker.open(directory)
    samples = Path(samples_dir) if samples_dir is not None else directory.resolve().parent / "evaluation_samples"
    records = sorted((r for r in tracker.records if r.status in ("evaluated", "failed")), key=lambda r: (r.time, r.seq))
    return [EvaluationEvent.from_record(r, is_best=r.status == "evaluated" and _best_at_record_time(records, r, tracker),
                                        samples_root=samples if r.status == "evaluated" else None)
            for r in records]


def export_run(checkpoint_dir: str | Path, sinks: SinkSpec | Any, *, samples_dir: str | Path | None = None,
               finish: bool = True) -> ExportResult:
    """Send every recorded evaluation of ``checkpoint_dir`` to ``sinks``; returns what was sent.

    A sink that fails is reported in ``sink_errors`` (after the usual single warning), never raised."""
    from bestckpt.tracking import layout
    from bestckpt.tracking.tracker import BestCheckpointTracker

    spec = SinkSpec.coerce(sinks)
    if not spec:
        raise ValueError("choose at least one sink, e.g. --sink mlflow")
    events = recorded_events(checkpoint_dir, samples_dir)
    directory = Path(checkpoint_dir)
    opened = make_sinks(spec, context={"checkpoint_dir": str(directory), "experiment_dir": str(directory.parent),
                                       "filename_suffix": ".export"})
    try:
        for event in events:
            for sink in opened:
                sink.log_evaluation(event)
                if event.is_best:
                    sink.log_best(event.step, str(event.path), dict(event.scores))
        if finish:
            summary = BestCheckpointTracker.open(directory).summary()
            results = directory / layout.RESULTS_FILE
            for sink in opened:
                sink.finish(summary, results if results.is_file() else None)
    finally:
        for sink in opened:
            sink.close()
    errors = {s.name: str(s.last_error) for s in opened if s.failures}
    return ExportResult(len(events), sum(1 for e in events if not e.ok), errors)
