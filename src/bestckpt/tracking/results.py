"""The guide's ``best_checkpoint_results.json``: the final (and running) summary of a tracked run.

Shape (the guide's keys first, ours after)::

    {"tracker_config": {...}, "best_checkpoints": [record, ...],          # ranking, best first
     "summary": {"total_tracked": n, "best_score": x, "best_checkpoint": "0002000.pt",
                 "best_step": 2000, "metric_name": ..., "higher_is_better": ...},
     "schema": "bestckpt.results/1", "pending": [steps], "failed": [{"step", "error"}], "updated_at": t}

Non-finite numbers are written as strings by :func:`bestckpt.fsio.to_strict_json` (never bare NaN).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["RESULTS_SCHEMA", "results_document"]

RESULTS_SCHEMA = "bestckpt.results/1"


def results_document(summary: Mapping[str, Any], tracker_config: Mapping[str, Any], updated_at: float) -> dict[str, Any]:
    """Build the results document from ``BestCheckpointTracker.summary()`` and the config dict."""
    return {
        "tracker_config": dict(tracker_config),
        "best_checkpoints": list(summary["ranking"]),
        "summary": {
            "total_tracked": summary["total_tracked"],
            "best_score": summary["best_score"],
            "best_checkpoint": summary["best_checkpoint"],
            "best_step": summary["best_step"],
            "metric_name": summary["metric_name"],
            "higher_is_better": summary["higher_is_better"],
            "evaluated": summary["evaluated"],
        },
        "schema": RESULTS_SCHEMA,
        "pending": list(summary["pending"]),
        "failed": list(summary["failed"]),
        "updated_at": updated_at,
    }
