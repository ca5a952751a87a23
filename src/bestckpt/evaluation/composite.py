"""The composite a protocol defines, and recomputing it from stored metrics (no re-sampling).

A protocol's composite is its ``composite_weights`` (default: the registry's weights of the metrics it computes) and
its ``composite_mappings`` (default: the registry's mappings, the CLIP one by convention). The mappings' scales must
suit the backbone that produced each metric: ``InverseMap(50)`` for FID suits Inception features, where a good model
scores tens; the demo classifier's FID runs from ~1,300 to ~100 over a demo run, so the demo protocol maps it with a
larger scale (:mod:`bestckpt.demo.train`). Both are part of :attr:`Protocol.hash`, so the composite is reproducible
from the protocol file; since they are *not* part of :attr:`Protocol.metrics_hash`, a new composite definition is
recomputed from the metrics already stored (:func:`recompute_composite`) instead of sampling again.
"""
from __future__ import annotations

from collections.abc import Mapping

from bestckpt.evaluation.protocol import Protocol
from bestckpt.metrics.composite import ScoreMap, composite_contributions, composite_score, mapping_from_dict

__all__ = ["composite_definition", "composite_shares", "protocol_composite_config", "recompute_composite"]


def protocol_composite_config(protocol: Protocol):  # type: ignore[no-untyped-def]
    """The :class:`~bestckpt.evaluation.scorer.CompositeConfig` a protocol's scorer uses."""
    from bestckpt.evaluation.scorer import CompositeConfig

    weights = None if protocol.composite_weights is None else dict(protocol.composite_weights)
    mappings = None if protocol.composite_mappings is None else {
        k: mapping_from_dict(v) for k, v in protocol.composite_mappings.items()}
    return CompositeConfig(weights=weights, mappings=mappings)


def composite_definition(protocol: Protocol) -> tuple[dict[str, float], dict[str, ScoreMap]]:
    """(weights, mappings) of the protocol's composite, resolved exactly as its scorer resolves them."""
    conv = str(dict((protocol.metric_options or {}).get("clip_score", {})).get("convention", "cosine"))
    return protocol_composite_config(protocol).resolve(tuple(protocol.metrics or ()), conv)  # type: ignore[no-any-return]


def recompute_composite(metrics: Mapping[str, float | None], protocol: Protocol) -> float:
    """The composite ``protocol`` gives stored component metrics (scored under a protocol with the same
    :attr:`~Protocol.metrics_hash`); raises :class:`~bestckpt.errors.CompositeUnavailableError` if one is missing."""
    weights, mappings = composite_definition(protocol)
    return composite_score(metrics, weights, mappings)


def composite_shares(first: Mapping[str, float | None], last: Mapping[str, float | None],
                     weights: Mapping[str, float], mappings: Mapping[str, ScoreMap]) -> dict[str, float]:
    """Each component's change of its composite term from ``first`` to ``last`` metrics (they sum to the
    composite's change): how much of the composite's movement each metric made."""
    a = composite_contributions(first, weights, mappings)
    b = composite_contributions(last, weights, mappings)
    return {k: b[k] - a[k] for k in weights}
