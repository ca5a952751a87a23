"""Composite score: a weighted mean of metrics, each first mapped to a bounded higher-is-better scale in [0, 1].

    composite = Σ_k w_k · m_k(x_k) / Σ_k w_k

Default weights are the guide's (CLIP 0.4, IS 0.3, LPIPS 0.2, FID 0.1). The original applied *negative* weights to
``1/(1+x)`` of LPIPS and FID — a better (lower) LPIPS or FID then *lowered* the composite — and mixed raw IS (2–10)
with raw CLIP cosines (≈0.3), so IS swamped everything. Here every mapping is strictly monotone in the metric's
"better" direction and bounded, so a better value of any component always raises the composite, and all weights are
positive. Default mappings (the ``scale`` is the value mapped to 0.5):

- ``clip_score`` (raw cosine in [-1, 1]): ``LinearMap(-1, 1)`` → (x + 1) / 2   (other conventions: see
  :func:`default_mappings`)
- ``inception_score`` (≥ 1): ``ReciprocalComplementMap()`` → 1 − 1/x
- ``lpips`` (≥ 0, lower is better): ``InverseMap(0.5)`` → 1 / (1 + x/0.5)
- ``fid`` (≥ 0, lower is better): ``InverseMap(50)`` → 1 / (1 + x/50)

Contract: if any weighted component is absent, ``None``, NaN or infinite, :class:`CompositeUnavailableError` is raised
(there is never a partial composite, so a broken evaluation can never beat a working one).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bestckpt.errors import CompositeUnavailableError

__all__ = [
    "ScoreMap", "LinearMap", "InverseMap", "RatioMap", "ReciprocalComplementMap", "LogisticMap",
    "check_composite_weights", "composite_score", "composite_contributions", "default_mappings", "DEFAULT_WEIGHTS",
    "mapping_from_dict", "mapping_to_dict",
]

#: The guide's weights (all positive: the direction is handled by the mappings).
DEFAULT_WEIGHTS: dict[str, float] = {"clip_score": 0.4, "inception_score": 0.3, "lpips": 0.2, "fid": 0.1}


class ScoreMap:
    """A strictly monotone map of a metric value to (0, 1); ``increasing`` says which direction is better."""

    increasing: bool = True

    def __call__(self, x: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class LinearMap(ScoreMap):
    """(x − lo) / (hi − lo) for a higher-is-better metric bounded in [lo, hi]; values outside raise."""

    lo: float
    hi: float
    increasing = True

    def __call__(self, x: float) -> float:
        tol = 1e-6 * (self.hi - self.lo)
        if not self.lo - tol <= x <= self.hi + tol:
            raise ValueError(f"value {x} is outside the mapping range [{self.lo}, {self.hi}]; configure a mapping "
                             f"that matches this metric's scale (e.g. another CLIP convention)")
        return (min(max(x, self.lo), self.hi) - self.lo) / (self.hi - self.lo)


@dataclass(frozen=True)
class InverseMap(ScoreMap):
    """1 / (1 + x/scale) for a lower-is-better metric x ≥ 0 (FID, LPIPS)."""

    scale: float
    increasing = False

    def __call__(self, x: float) -> float:
        if x < 0:
            raise ValueError(f"InverseMap expects a non-negative value, got {x}; use LogisticMap for metrics that "
                             f"can be negative (e.g. KID)")
        return 1.0 / (1.0 + x / self.scale)


@dataclass(frozen=True)
class RatioMap(ScoreMap):
    """x / (x + scale) for a higher-is-better metric x ≥ 0."""

    scale: float
    increasing = True

    def __call__(self, x: float) -> float:
        if x < 0:
            raise ValueError(f"RatioMap expects a non-negative value, got {x}")
        return x / (x + self.scale)


@dataclass(frozen=True)
class ReciprocalComplementMap(ScoreMap):
    """1 − 1/x for a higher-is-better metric x ≥ 1 (Inception Score: 1 = one class or uniform, up to #classes)."""

    increasing = True

    def __call__(self, x: float) -> float:
        if x < 1.0 - 1e-9:
            raise ValueError(f"ReciprocalComplementMap expects a value >= 1 (an Inception Score), got {x}")
        return 1.0 - 1.0 / max(x, 1.0)


@dataclass(frozen=True)
class LogisticMap(ScoreMap):
    """σ((x − center)/scale), or σ(−(x − center)/scale) when ``higher_is_better`` is False; any real x."""

    scale: float = 1.0
    center: float = 0.0
    higher_is_better: bool = True

    @property
    def increasing(self) -> bool:  # type: ignore[override]
        return self.higher_is_better

    def __call__(self, x: float) -> float:
        z = (x - self.center) / self.scale
        z = z if self.higher_is_better else -z
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def default_mappings(clip_convention: str = "cosine") -> dict[str, ScoreMap]:
    """Default mappings of the guide's four components; the CLIP range follows the CLIP score convention."""
    clip_ranges = {"cosine": (-1.0, 1.0), "torchmetrics": (0.0, 100.0), "hessel": (0.0, 2.5)}
    if clip_convention not in clip_ranges:
        raise ValueError(f"unknown CLIP convention {clip_convention!r}; use one of {sorted(clip_ranges)}")
    return {
        "clip_score": LinearMap(*clip_ranges[clip_convention]),
        "inception_score": ReciprocalComplementMap(),
        "lpips": InverseMap(0.5),
        "fid": InverseMap(50.0),
    }


#: JSON name of each mapping type (a protocol stores its mappings as ``{"type": name, **fields}``).
_MAP_TYPES: dict[str, type[ScoreMap]] = {"linear": LinearMap, "inverse": InverseMap, "ratio": RatioMap,
                                         "reciprocal_complement": ReciprocalComplementMap, "logistic": LogisticMap}


def mapping_to_dict(mapping: ScoreMap) -> dict[str, object]:
    """JSON form of a built-in mapping, e.g. ``{"type": "inverse", "scale": 50.0}`` (what a protocol hashes)."""
    for name, cls in _MAP_TYPES.items():
        if type(mapping) is cls:
            return {"type": name, **dataclasses.asdict(mapping)}  # type: ignore[call-overload]
    raise ValueError(f"mapping {mapping!r} is not a built-in mapping ({sorted(_MAP_TYPES)}); a protocol can only "
                     f"carry built-in mappings, so that its composite is reproducible from its JSON")


def mapping_from_dict(data: Mapping[str, object]) -> ScoreMap:
    """Inverse of :func:`mapping_to_dict`; raises ValueError naming the accepted types and fields."""
    fields = dict(data)
    kind = fields.pop("type", None)
    if kind not in _MAP_TYPES:
        raise ValueError(f"mapping {dict(data)!r} needs 'type' one of {sorted(_MAP_TYPES)}")
    cls = _MAP_TYPES[str(kind)]
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"mapping {dict(data)!r}: unknown field(s) {unknown}; {kind} takes {sorted(allowed)}")
    try:
        mapping = cls(**{k: (v if isinstance(v, bool) else float(v)) for k, v in fields.items()})  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mapping {dict(data)!r}: {exc}") from exc
    for name in ("scale",):
        value = getattr(mapping, name, None)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"mapping {dict(data)!r}: {name} must be positive and finite")
    if isinstance(mapping, LinearMap) and not mapping.hi > mapping.lo:
        raise ValueError(f"mapping {dict(data)!r}: hi must be greater than lo")
    return mapping


def check_composite_weights(
    weights: Mapping[str, float],
    mappings: Mapping[str, ScoreMap] | None = None,
    *,
    higher_is_better: Mapping[str, bool] | None = None,
    computed: Collection[str] | None = None,
    allow_empty: bool = False,
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` unless the composite's weights (and mappings) are usable; the one place they are checked.

    - ``weights`` non-empty (unless ``allow_empty``), each positive and finite: a metric's direction is carried by
      its mapping, never by a negative weight;
    - with ``computed`` (the metrics an evaluation computes): every weighted metric is among them;
    - with ``mappings``: every weighted metric has a mapping;
    - with ``higher_is_better`` (metric -> direction): every given mapping of a metric listed there points the
      metric's way, so a better value always raises the composite.

    Callers that treat a zero weight as "not in the composite" drop zeros before calling.
    """
    if not weights and not allow_empty:
        among = "" if computed is None else f" among metrics={list(computed)}"
        raise error(f"the composite has no weighted component{among}; give at least one metric a positive weight "
                    f"(CompositeConfig(weights=...) in a Scorer) or drop 'composite_score'")
    for name in dict.fromkeys([*weights, *(mappings or {})]):
        if name in weights:
            w = weights[name]
            if not (w > 0 and math.isfinite(w)):
                raise error(f"composite weight for {name!r} must be positive and finite, got {w}; the direction of a "
                            f"metric is handled by its mapping (higher_is_better), not by a negative weight")
            if computed is not None and name not in computed:
                raise error(f"composite weight given for {name!r}, which this evaluation does not compute "
                            f"(metrics={list(computed)}); add it to metrics or drop its weight")
            if mappings is not None and name not in mappings:
                raise error(f"no composite mapping for {name!r}; pass mappings={{{name!r}: InverseMap(...)}} "
                            f"(CompositeConfig(mappings=...) in a Scorer) or register the metric with a mapping")
        if mappings is not None and higher_is_better is not None and name in mappings and name in higher_is_better:
            mapping, better_up = mappings[name], bool(higher_is_better[name])
            if mapping.increasing != better_up:
                raise error(f"mapping {mapping!r} for {name!r} is "
                            f"{'increasing' if mapping.increasing else 'decreasing'} but higher_is_better="
                            f"{better_up}: it points the wrong way; a better value must raise the composite")


def composite_score(
    metrics: Mapping[str, float | None],
    weights: Mapping[str, float],
    mappings: Mapping[str, ScoreMap],
) -> float:
    """Weighted mean in [0, 1] of the mapped components named in ``weights``.

    The registry's defaults (the guide's four plus any custom metric registered with a ``composite_weight``) are
    ``bestckpt.metrics.composite_defaults()``: ``composite_score(values, *composite_defaults())``. Raises
    :class:`CompositeUnavailableError` if a weighted component is missing or failed, and ValueError (from
    :func:`check_composite_weights`) for empty weights, a weight that is not positive and finite, or a weighted
    component without a mapping.
    """
    missing = tuple(
        k for k in weights
        if metrics.get(k) is None or not math.isfinite(float(metrics[k]))  # type: ignore[arg-type]
    )
    if missing:
        raise CompositeUnavailableError(
            f"composite score unavailable: component(s) {list(missing)} missing or failed "
            f"(got {{{', '.join(f'{k}: {metrics.get(k)!r}' for k in missing)}}}); no partial composite is computed",
            missing,
        )
    check_composite_weights(weights, mappings)
    total_w = 0.0
    acc = 0.0
    for name, w in weights.items():
        acc += w * mappings[name](float(metrics[name]))  # type: ignore[arg-type]
        total_w += w
    return acc / total_w


def composite_contributions(
    metrics: Mapping[str, float | None],
    weights: Mapping[str, float],
    mappings: Mapping[str, ScoreMap],
) -> dict[str, float]:
    """Each weighted component's term ``w_k · m_k(x_k) / Σ w``; the terms sum to :func:`composite_score`.

    The difference of two checkpoints' terms is each component's share of their composite's change (the report
    shows it). Raises like :func:`composite_score`."""
    composite_score(metrics, weights, mappings)  # the same checks and errors
    total_w = sum(weights.values())
    return {name: w * mappings[name](float(metrics[name])) / total_w  # type: ignore[arg-type]
            for name, w in weights.items()}
