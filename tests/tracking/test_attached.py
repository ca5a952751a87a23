"""Results attached to a record after scoring (``BestCheckpointTracker.annotate``, :mod:`bestckpt.tracking.attached`):
stored with the record, in the summary and the results JSON, never in the ranking; bad input is refused by name."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bestckpt.errors import ConfigError
from bestckpt.tracking.attached import result_scalars
from bestckpt.tracking.tracker import BestCheckpointTracker


def _tracker(tmp_path: Path) -> BestCheckpointTracker:
    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_latest=1)
    for step, score in ((100, 0.5), (200, 0.9), (300, 0.7)):
        (tmp_path / f"{step:07d}.pt").write_bytes(b"x")
        tracker.update_checkpoint(step, None, tmp_path / f"{step:07d}.pt", {"composite_score": score})
    return tracker


def test_stored_with_the_record_and_in_the_summary_and_results_file(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    before = [(r.step, r.status, r.metrics) for r in tracker.records]
    tracker.annotate(200, "accuracy", {"classifier": {"color": 0.9}, "num_prompts": 12})
    tracker.annotate(200, "holdout", [0.5, 0.25])
    tracker.annotate(200, "accuracy", {"classifier": {"color": 0.95}, "num_prompts": 12})  # replaces by name
    reopened = BestCheckpointTracker.open(tmp_path)  # from the state file
    want = {"200": {"accuracy": {"classifier": {"color": 0.95}, "num_prompts": 12}, "holdout": [0.5, 0.25]}}
    assert reopened.summary()["results"] == want
    assert [(r.step, r.status, r.metrics) for r in reopened.records] == before  # the ranking is untouched
    assert reopened.best is not None and reopened.best.step == 200
    tracker.write_results()
    assert json.loads((tmp_path / "best_checkpoint_results.json").read_text())["results"] == want


def test_bad_input_is_refused_by_name(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    with pytest.raises(ConfigError, match=r"step 999 has no record"):
        tracker.annotate(999, "accuracy", 0.5)
    with pytest.raises(ConfigError, match=r"result name 'a/b'"):
        tracker.annotate(200, "a/b", 0.5)
    with pytest.raises(ConfigError, match="info"):
        tracker.annotate(200, "accuracy", {"model": object()})
    assert BestCheckpointTracker.open(tmp_path).summary()["results"] == {}


def test_scalars_are_the_finite_numeric_leaves() -> None:
    results = {"20": {"acc": {"all": 0.5, "per": [0.25, math.nan], "ok": True, "name": "x"}},
               "3": {"n": 7}}
    assert result_scalars(results) == [(3, "Evaluation/n", 7.0), (20, "Evaluation/acc/all", 0.5),
                                       (20, "Evaluation/acc/per/0", 0.25)]
    assert result_scalars(None) == []
