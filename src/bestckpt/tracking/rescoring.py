"""Re-scoring a checkpoint that already has a valid score: a failure never costs that score.

An evaluation can fail for reasons that say nothing about the checkpoint (out of memory, a missing
weight file, a broken new protocol). So when re-evaluating a checkpoint that has a valid score fails
(:meth:`~bestckpt.tracking.tracker.BestCheckpointTracker.record_failure`, or an ``update_checkpoint``
without a usable tracked metric), the record keeps its earlier metrics, status and protocol; the
failure is noted in it (``error`` = ``"re-evaluation failed: ..."``, ``info["last_failure"]``) and
logged. Only a checkpoint that never had a valid score becomes ``failed``.

A checkpoint marked for re-scoring (:func:`pending_again`, e.g. after a protocol change) is
``pending`` (protected, not ranked: its old score is not comparable) and remembers its earlier
evaluation in ``info["rescoring"]``; a successful score replaces the record, a failure brings the
earlier evaluation back.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

from bestckpt.errors import ConfigError
from bestckpt.tracking.state import Record, TrackerState

__all__ = ["RESCORING", "had_valid_score", "pending_again", "failed_again"]

logger = logging.getLogger(__name__)

#: ``info`` key of a checkpoint pending re-scoring: its earlier ``protocol_hash`` and ``error``
RESCORING = "rescoring"


def had_valid_score(old: Record | None, metric_name: str) -> bool:
    """Whether ``old`` (a step's current record) holds a valid score that a failed re-evaluation must keep."""
    if old is None or old.pruned or old.status not in ("evaluated", "pending"):
        return False
    if old.status == "pending" and not isinstance(old.info.get(RESCORING), dict):
        return False  # saved, with an evaluation to come: it never had a score
    value = old.metrics.get(metric_name)
    return value is not None and math.isfinite(value)


def pending_again(old: Record | None, step: int) -> Record:
    """Step ``step``'s record ``old`` pending re-scoring, remembering its evaluation for a failed re-scoring."""
    if old is None or old.pruned or old.status != "evaluated":
        raise ConfigError(f"step {step} is not an evaluated checkpoint on disk ({old}); only those can be marked "
                          "for re-scoring")
    earlier = {"protocol_hash": old.protocol_hash, "error": old.error}
    return dataclasses.replace(old, status="pending", info=dict(old.info, **{RESCORING: earlier}))


def failed_again(st: TrackerState, old: Record | None, error: str, protocol_hash: str | None,
                 metric_name: str) -> bool:
    """Record a failed re-evaluation of ``old``, keeping its earlier score, if it :func:`had_valid_score`;
    else do nothing and return False (the caller records an ordinary failure)."""
    if old is None or not had_valid_score(old, metric_name):
        return False
    info = {k: v for k, v in old.info.items() if k != RESCORING}
    earlier = old.info.get(RESCORING) if old.status == "pending" else None
    failure: dict[str, object] = {"error": str(error), "time": time.time()}
    if protocol_hash is not None:
        failure["protocol_hash"] = protocol_hash
    info["last_failure"] = failure
    st.put(dataclasses.replace(
        old, status="evaluated", error=f"re-evaluation failed: {error}", info=info,
        protocol_hash=earlier.get("protocol_hash") if isinstance(earlier, dict) else old.protocol_hash,
    ))
    logger.warning("step %d: re-evaluation failed (%s); its earlier score is kept (an infrastructure failure never "
                   "costs a valid score). Re-evaluate it again when the cause is fixed", old.step, error)
    return True
