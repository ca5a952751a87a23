"""A resumed run whose protocol changed: refuse clearly, or mark the stale checkpoints for re-scoring.

Scores from different protocols are never compared; every runner calls :func:`reconcile_protocol`
when it starts. A checkpoint marked for re-scoring keeps its earlier score in reserve: if the new
protocol cannot score it (its setup fails, out of memory...), the earlier score comes back rather than
the checkpoint becoming ``failed`` and prunable (:mod:`bestckpt.tracking.rescoring`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bestckpt.errors import ProtocolChangedError

if TYPE_CHECKING:
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["ON_PROTOCOL_CHANGE", "ProtocolChangedError", "reconcile_protocol"]

logger = logging.getLogger(__name__)


ON_PROTOCOL_CHANGE = ("refuse", "rescore")


def _recomposed(tracker: BestCheckpointTracker, record: Any, protocol: Protocol) -> bool:
    """Re-record ``record`` under ``protocol`` if only the composite's definition changed (same
    :attr:`~bestckpt.evaluation.protocol.Protocol.metrics_hash`): its composite is recomputed from the stored
    metrics, nothing is sampled again. False when the metrics themselves would differ or one is missing."""
    if record.info.get("metrics_hash") != protocol.metrics_hash or tracker.metric_name != "composite_score":
        return False
    from bestckpt.errors import CompositeUnavailableError
    from bestckpt.evaluation.composite import recompute_composite

    try:
        composite = recompute_composite(record.metrics, protocol)
    except (CompositeUnavailableError, ValueError):
        return False
    old = record.metrics.get("composite_score")
    tracker.update_checkpoint(record.step, record.epoch, record.path, {**record.metrics, "composite_score": composite},
                              protocol_hash=protocol.hash, info={**record.info, "recomposed_from": record.protocol_hash})
    logger.info("step %d: composite %s -> %.6g under protocol %s, recomputed from the stored metrics (only the "
                "composite's definition changed)", record.step, old, composite, protocol.hash[:12])
    return True


def reconcile_protocol(tracker: BestCheckpointTracker, protocol: Protocol, on_change: str = "refuse") -> list[int]:
    """Check that every scored checkpoint still on disk was scored under ``protocol``.

    Scores from different protocols are never compared. A checkpoint whose protocol differs only in the
    composite's definition (weights, mapping scales) gets its composite recomputed from its stored metrics
    under the new protocol, whatever ``on_change`` says: nothing is sampled again. For the others, ``"refuse"`` raises
    :class:`ProtocolChangedError` naming the steps and the ways out; ``"rescore"`` marks those
    checkpoints pending again (protected from pruning, their earlier scores kept for a failed
    re-scoring) and returns their steps, so the runner scores them under the new protocol.
    """
    if on_change not in ON_PROTOCOL_CHANGE:
        raise ValueError(f"on_protocol_change must be one of {ON_PROTOCOL_CHANGE}, got {on_change!r}")
    stale = [r for r in tracker.records
             if not r.pruned and r.status == "evaluated" and r.protocol_hash not in (None, protocol.hash)]
    stale = [r for r in stale if not _recomposed(tracker, r, protocol)]
    if not stale:
        return []
    steps = [r.step for r in stale]
    if on_change == "refuse":
        old = sorted({str(r.protocol_hash)[:12] for r in stale})
        raise ProtocolChangedError(
            f"{len(steps)} checkpoint(s) in {tracker.config.checkpoint_dir} (steps {steps[:10]}) were scored under "
            f"protocol(s) {old}, not the current {protocol.hash[:12]}; their scores are not comparable. Use the "
            "earlier protocol, or pass on_protocol_change='rescore' (CLI: --on-protocol-change rescore) to re-score "
            "them, or re-score offline with `bestckpt evaluate DIR --protocol NEW`"
        )
    logger.warning("protocol changed: re-scoring steps %s under protocol %s", steps, protocol.hash[:12])
    for r in stale:
        tracker.mark_for_rescoring(r.step)
    return steps
