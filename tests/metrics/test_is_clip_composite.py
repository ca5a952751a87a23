"""Inception Score parity, CLIP score conventions, composite monotonicity/missing components, registry."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from bestckpt.metrics import (
    METRICS,
    CompositeUnavailableError,
    InverseMap,
    LinearMap,
    LogisticMap,
    check_composite_weights,
    clip_score,
    composite_defaults,
    composite_score,
    default_mappings,
    inception_score_from_logits,
    register_metric,
    unregister_metric,
)


@pytest.mark.parametrize("n,splits,seed", [(200, 10, 2020), (97, 3, 5)])
def test_inception_score_matches_torch_fidelity(n: int, splits: int, seed: int) -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(n, 1008, generator=torch.Generator().manual_seed(seed)) * 3
    ref = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    mean, std = inception_score_from_logits(logits, splits=splits, seed=seed)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-6)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-4)
    ref_ns = isc_features_to_metric(logits, splits=splits, shuffle=False)
    assert inception_score_from_logits(logits, splits, shuffle=False)[0] == pytest.approx(
        ref_ns["inception_score_mean"], rel=1e-6)


def test_inception_score_small_split_warning_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    logits = torch.randn(20, 1008, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="bestckpt.metrics.inception_score"):
        inception_score_from_logits(logits, splits=10)
    assert "2 per split" in caplog.text and "KID" in caplog.text
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_logits(logits, splits=21)
    # confident, diverse predictions -> IS near the number of classes used
    one_hot = torch.eye(50).repeat(4, 1) * 50
    assert inception_score_from_logits(one_hot, splits=1)[0] == pytest.approx(50, rel=1e-6)


def test_clip_score_conventions_and_pairing() -> None:
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=1)
    assert clip_score(img, txt) == pytest.approx(float(cos.mean()), abs=1e-12)
    assert clip_score(img, txt, "torchmetrics") == pytest.approx(max(100 * float(cos.mean()), 0.0), abs=1e-9)
    assert clip_score(img, txt, "hessel") == pytest.approx(float((2.5 * cos.clamp(min=0)).mean()), abs=1e-12)
    assert clip_score(img, img) == pytest.approx(1.0)
    # paired: shuffling the prompts changes the score (the original compared every prompt with every image)
    assert clip_score(img, img[torch.tensor([1, 2, 3, 4, 5, 0])]) < 0.9
    with pytest.raises(ValueError, match="paired"):
        clip_score(img, txt[:5])
    with pytest.raises(ValueError, match="convention"):
        clip_score(img, txt, "bogus")


BASE = {"clip_score": 0.30, "inception_score": 3.0, "lpips": 0.45, "fid": 120.0}
BETTER = {"clip_score": 0.32, "inception_score": 3.5, "lpips": 0.40, "fid": 100.0}


def default_composite(metrics: dict[str, object]) -> float:
    """The composite with the registry's default weights and mappings."""
    return composite_score(metrics, *composite_defaults())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BASE))
def test_composite_better_component_always_raises_composite(name: str) -> None:
    """Defect 1 of the original: negative weights on 1/(1+x) made a better LPIPS/FID lower the composite."""
    better = dict(BASE, **{name: BETTER[name]})
    assert default_composite(better) > default_composite(BASE)
    worse_value = 2 * BASE[name] - BETTER[name]
    assert default_composite(dict(BASE, **{name: worse_value})) < default_composite(BASE)


def test_composite_is_bounded_and_not_swamped_by_inception_score() -> None:
    """Defect 2: raw IS (2-10) swamped raw CLIP cosines. Mapped components each stay in [0, 1]."""
    assert 0.0 < default_composite(BASE) < 1.0
    huge_is = default_composite(dict(BASE, inception_score=1000.0)) - default_composite(BASE)
    assert huge_is < 0.3 * (1 - 1 / 3.0) + 1e-9  # bounded by the IS weight times the remaining headroom
    expected = (0.4 * (1.3 / 2) + 0.3 * (1 - 1 / 3) + 0.2 / (1 + 0.45 / 0.5) + 0.1 / (1 + 120 / 50)) / 1.0
    assert default_composite(BASE) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "absent"])
def test_composite_missing_or_failed_component_is_never_partial(bad: object) -> None:
    """Defect 3: a failed metric silently dropped let a broken evaluation beat a working one."""
    metrics = dict(BASE)
    if bad == "absent":
        del metrics["fid"]
    else:
        metrics["fid"] = bad  # type: ignore[assignment]
    with pytest.raises(CompositeUnavailableError) as info:
        default_composite(metrics)
    assert info.value.missing == ("fid",)


def test_composite_custom_weights_mappings_and_validation() -> None:
    only_fid = composite_score({"fid": 50.0}, weights={"fid": 1.0}, mappings={"fid": InverseMap(50.0)})
    assert only_fid == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        composite_score(BASE, {"fid": -0.1}, {"fid": InverseMap(50.0)})
    weights, mappings = composite_defaults()
    m = {**mappings, **default_mappings("torchmetrics")}
    assert composite_score(dict(BASE, clip_score=30.0), weights, m) == pytest.approx(default_composite(BASE) - 0.4 * (
        0.65 - 0.30))
    with pytest.raises(ValueError, match="outside the mapping range"):
        default_composite(dict(BASE, clip_score=30.0))


def test_check_composite_weights_is_the_one_validation() -> None:
    """Used by composite_score, register_metric and the Scorer's CompositeConfig: each rule, one message."""
    weights, mappings = composite_defaults()
    directions = {k: s.higher_is_better for k, s in METRICS.items()}
    check_composite_weights(weights, mappings, higher_is_better=directions, computed=list(weights))
    check_composite_weights({}, allow_empty=True)
    with pytest.raises(ValueError, match="no weighted component among metrics=.'fid'.*positive weight"):
        check_composite_weights({}, computed=["fid"])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="'fid' must be positive and finite.*mapping"):
            check_composite_weights({"fid": bad})
    with pytest.raises(ValueError, match="'fid', which this evaluation does not compute"):
        check_composite_weights({"fid": 1.0}, computed=["lpips"])
    with pytest.raises(ValueError, match="no composite mapping for 'fid'"):
        check_composite_weights({"fid": 1.0}, {})
    with pytest.raises(ValueError, match="'fid' is increasing but higher_is_better=False"):
        check_composite_weights({"fid": 1.0}, {"fid": LinearMap(0.0, 1.0)}, higher_is_better=directions)
    with pytest.raises(ValueError, match="'lpips' is increasing"):  # an unweighted mapping is checked as well
        check_composite_weights({}, {"lpips": LinearMap(0.0, 1.0)}, higher_is_better=directions, allow_empty=True)

    class ConfigProblem(Exception):
        pass

    with pytest.raises(ConfigProblem, match="positive"):
        check_composite_weights({"fid": -1.0}, error=ConfigProblem)


def test_register_custom_metric_joins_composite() -> None:
    spec = register_metric("sharpness", lambda f, ref, seed: float(f["x"].mean()), higher_is_better=True,
                           needs=("x",), composite_weight=0.5)
    try:
        assert METRICS["sharpness"] is spec and isinstance(spec.mapping, LogisticMap)
        assert spec.fn({"x": torch.tensor([1.0, 3.0])}, None, 0) == 2.0
        with pytest.raises(CompositeUnavailableError):
            default_composite(BASE)  # the custom component is now required
        lo, hi = default_composite(dict(BASE, sharpness=0.0)), default_composite(dict(BASE, sharpness=1.0))
        assert hi > lo
        assert lo == pytest.approx((composite_score_without_custom() * 1.0 + 0.5 * 0.5) / 1.5)
        with pytest.raises(ValueError, match="already registered"):
            register_metric("sharpness", lambda f, r, s: 0.0, True, ())
        with pytest.raises(ValueError, match="decreasing"):
            register_metric("bad", lambda f, r, s: 0.0, True, (), 0.1, InverseMap(1.0))
    finally:
        unregister_metric("sharpness")
    assert "sharpness" not in METRICS
    assert math.isfinite(default_composite(BASE))


def composite_score_without_custom() -> float:
    return composite_score(BASE, {k: METRICS[k].composite_weight for k in BASE},  # type: ignore[misc]
                           composite_defaults()[1])


def test_registry_directions_are_metadata() -> None:
    assert METRICS["fid"].higher_is_better is False and METRICS["lpips"].higher_is_better is False
    assert METRICS["clip_score"].higher_is_better and METRICS["inception_score"].higher_is_better
    assert METRICS["kid"].needs_reference and METRICS["fid"].needs_reference
    assert np.isclose(sum(s.composite_weight or 0 for s in METRICS.values()), 1.0)


def test_public_api_is_pinned_and_metrics_import_nothing_else_of_ours() -> None:
    import subprocess
    import sys

    import bestckpt.metrics as metrics

    assert sorted(metrics.__all__) == sorted([
        "CLIP_CONVENTIONS", "DEFAULT_METRICS", "clip_cosines", "clip_score", "DEFAULT_WEIGHTS", "InverseMap", "LinearMap",
        "LogisticMap", "RatioMap", "ReciprocalComplementMap", "ScoreMap", "check_composite_weights", "composite_score",
        "default_mappings",
        "CompositeUnavailableError", "MetricError", "NumericalError", "ReferenceStatistics", "fid_from_features",
        "fid_from_statistics", "inception_score_from_logits", "kid_from_features", "lpips_from_features",
        "FEATURE_CLIP_IMAGE", "FEATURE_CLIP_TEXT", "FEATURE_INCEPTION_LOGITS", "FEATURE_INCEPTION_POOL",
        "FEATURE_LPIPS", "METRICS", "REFERENCE_FID_STATISTICS", "REFERENCE_INCEPTION_POOL", "MetricSpec",
        "composite_defaults", "register_metric", "unregister_metric",
        "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "metric_intervals",
    ])
    assert all(hasattr(metrics, name) for name in metrics.__all__)
    code = ("import sys, bestckpt.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('bestckpt') and not m.startswith('bestckpt.metrics')"
            " and m != 'bestckpt'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['bestckpt.errors']"  # the exception root, and nothing else of ours
