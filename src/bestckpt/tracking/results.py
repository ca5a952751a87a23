"""The guide's ``best_checkpoint_results.json``: the final (and running) summary of a tracked run.

Shape (the guide's keys first, ours after)::

    {"tracker_config": {...}, "best_checkpoints": [record, ...],          # ranking, best first
     "summary": {"total_tracked": n, "best_score": x, "best_checkpoint": "0002000.pt",
                 "best_step": 2000, "metric_name": ..., "higher_is_better": ...},
     "schema": "bestckpt.results/1", "pending": [steps], "failed": [{"step", "error"}], "updated_at": t}

Non-finite numbers are written as strings by :func:`bestckpt.fsio.to_strict_json` (never bare NaN).

:class:`ResultsFile` writes it. The tracker refreshes it after every call, so it is rewritten only
when its content (everything but ``updated_at``) changed, and each ranked record's JSON is encoded
once (records are immutable) rather than at every call. It is derived from the state, so it is
written atomically but not fsynced: the state is the durable record, and a new tracker rewrites
this file at its first commit.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt import fsio
from bestckpt.tracking import attached
from bestckpt.tracking.layout import RESULTS_FILE

if TYPE_CHECKING:
    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.ranking import Ranking
    from bestckpt.tracking.state import TrackerState

__all__ = ["RESULTS_SCHEMA", "results_document", "ResultsFile", "summary_of"]

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
        "results": dict(summary.get("results") or {}),  # attached after scoring (tracker.annotate)
        "updated_at": updated_at,
    }


class ResultsFile:
    """``best_checkpoint_results.json`` of one directory, with the cache that makes refreshing it cheap.

    Text identical to ``fsio.to_strict_json(results_document(...), indent=2)``.
    """

    def __init__(self, checkpoint_dir: Path, cache_limit: int) -> None:
        self.path = Path(checkpoint_dir) / RESULTS_FILE
        self._cache_limit = cache_limit  # more cached steps than this: start over (pruned ones linger)
        self._signature: str | None = None  # the last text written, less its updated_at
        self._fragments: dict[int, tuple[Any, str]] = {}  # step -> (record, its indented JSON)

    def write(self, summary: Mapping[str, Any], ranked: Sequence[Any], tracker_config: Mapping[str, Any], *,
              force: bool = False) -> None:
        """Write the document of ``summary`` (``ranked``: the records behind its ranking, best first),
        unless ``force`` is false and the file already holds the same content."""
        doc = results_document(summary, tracker_config, time.time())
        cache = self._fragments
        if len(cache) > self._cache_limit:
            cache.clear()
        fragments = []
        for rec in ranked:
            hit = cache.get(rec.step)
            if hit is None or hit[0] is not rec:
                hit = cache[rec.step] = (rec, fsio.to_strict_json(rec.to_json(), indent=2))
            fragments.append(hit[1])
        assert len(fragments) == len(doc["best_checkpoints"]) and list(doc)[-1] == "updated_at"
        members = [(key, fsio.indented_array(fragments) if key == "best_checkpoints"
                    else fsio.to_strict_json(value, indent=2)) for key, value in doc.items()]
        signature = fsio.indented_object(members[:-1])
        if not force and signature == self._signature and self.path.exists():
            return
        fsio.atomic_write_text(self.path, fsio.indented_object(members) + "\n", durable=False)
        self._signature = signature


def summary_of(st: TrackerState, rank: Ranking, config: TrackerConfig, limit: int | None = None) -> dict[str, Any]:
    """The run in one dict (what ``BestCheckpointTracker.summary()`` returns): the ranking's head (at most
    ``limit`` records, best first, as JSON records), the best, pending and failed steps, counts."""
    ranking = rank.head(limit)
    best = ranking[0] if ranking else None  # limit is None or >= 1: the head is the same
    records = st.records
    return {
        "metric_name": config.metric_name,
        "higher_is_better": config.higher_is_better,
        "save_top_k": config.save_top_k,
        "total_tracked": rank.count(),
        "best_score": best.score(config.metric_name) if best else None,
        "best_checkpoint": best.path if best else None,
        "best_step": best.step if best else None,
        "ranking": [r.to_json() for r in ranking],
        "evaluated": len(rank.with_status("evaluated")),
        "pending": sorted(rank.with_status("pending")),
        "failed": [{"step": s, "error": records[s].error} for s in rank.failed_steps()],
        "records_total": len(records),
        "on_disk": len(st.live_steps),
        "results": attached.results_of(st),
    }
