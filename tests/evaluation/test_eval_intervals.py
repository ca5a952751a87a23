"""Intervals travel from the scorer through evaluate_checkpoint into the tracker's record (``info["intervals"]``),
survive a reload of the state, and are checked on the way (only finite pairs, only for metrics with a value)."""
from __future__ import annotations

import math
from pathlib import Path

from pipeline_kit import KitScorer, TinySampler, make_protocol, save_checkpoint

from bestckpt.metrics.intervals import mean_replicates, percentile_interval, resample_counts
from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner
from bestckpt.tracking.tracker import BestCheckpointTracker


class IntervalScorer(KitScorer):
    """KitScorer plus a real bootstrap interval of IS-like per-sample values, one bad pair and one without value."""

    def score(self, features, reference, seed: int = 0):  # type: ignore[no-untyped-def]
        scores = dict(super().score(features, reference, seed))
        out = type("Scores", (dict,), {})(scores)
        out.intervals = {  # type: ignore[attr-defined]
            "composite_score": percentile_interval(mean_replicates(
                features["pool"][:, 0].numpy(), resample_counts(features["pool"].shape[0], 200, seed))),
            "fid": (math.nan, 1.0),  # not finite: dropped
            "clip_score": (0.1, 0.2),  # no such score: dropped
        }
        out.failures = {}  # type: ignore[attr-defined]
        return out


def test_intervals_reach_the_record_and_survive_a_reload(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True)
    runner = InlineRunner(tracker, Evaluator(protocol, TinySampler(), scorer=IntervalScorer(), dist=None,
                                             batch_size=4), EvalSchedule(every_n_checkpoints=1))
    result = runner.checkpoint_saved(10, save_checkpoint(ckpt_dir / "0000010.pt", 10))
    assert result.ok and set(result.intervals) == {"composite_score"}
    lo, hi = result.intervals["composite_score"]
    assert lo <= hi
    reopened = BestCheckpointTracker.open(ckpt_dir, is_writer=False)
    assert reopened.records[0].info["intervals"] == {"composite_score": [lo, hi]}
