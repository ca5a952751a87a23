"""Bootstrap intervals of the metrics: coverage over synthetic repeats with a known answer, the linearised FID/KID
bootstrap against the naive one at small d, the exact IS replicates, the composite's own interval, KID's spread."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bestckpt.metrics import (
    METRICS,
    ReferenceStatistics,
    composite_defaults,
    inception_score_from_logits,
    kid_from_features,
)
from bestckpt.metrics.bootstrap import metric_intervals
from bestckpt.metrics.intervals import (
    fid_influence,
    fid_replicates,
    inception_score_replicates,
    kid_replicates,
    mean_replicates,
    percentile_interval,
    resample_counts,
)

REPEATS = 300  # >= 200 synthetic repeats per coverage test


def _coverage(hits: list[bool]) -> float:
    assert len(hits) >= 200
    return float(np.mean(hits))


def test_resamples_are_seeded_multinomial_counts() -> None:
    a, b = resample_counts(50, 20, seed=3), resample_counts(50, 20, seed=3)
    assert np.array_equal(a, b) and a.shape == (20, 50) and np.all(a.sum(axis=1) == 50)
    assert not np.array_equal(a, resample_counts(50, 20, seed=4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        resample_counts(1)


def test_percentile_interval_refuses_non_finite_replicates() -> None:
    assert percentile_interval([1.0, np.nan, 2.0]) is None
    lo, hi = percentile_interval(np.arange(1001.0))  # type: ignore[misc]
    assert (lo, hi) == pytest.approx((25.0, 975.0))
    lo, hi = percentile_interval(np.arange(1001.0), center=600.0)  # type: ignore[misc]  # shifted onto the score
    assert (lo, hi) == pytest.approx((125.0, 1075.0))


def test_mean_interval_covers_the_expectation() -> None:
    """Per-sample metric (a CLIP cosine / LPIPS distance): skewed per-sample values, known mean 0.3."""
    rng = np.random.default_rng(0)
    hits = []
    for rep in range(REPEATS):
        v = 0.3 * rng.exponential(size=150)  # E = 0.3, strongly skewed
        ci = percentile_interval(mean_replicates(v, resample_counts(150, 400, seed=rep)), center=float(v.mean()))
        assert ci is not None
        hits.append(ci[0] <= 0.3 <= ci[1])
    assert 0.90 <= _coverage(hits) <= 0.99


def test_mean_replicates_leave_out_samples_without_a_value() -> None:
    v = np.array([1.0, np.nan, 3.0, np.nan])
    assert mean_replicates(v, np.ones((1, 4)))[0] == pytest.approx(2.0)


def _gaussian_case(d: int) -> tuple[ReferenceStatistics, np.ndarray, np.ndarray]:
    ref = ReferenceStatistics(np.zeros(d), np.eye(d), num_samples=10**6)
    mu = np.linspace(0.3, 1.0, d)
    scale = np.linspace(0.5, 1.5, d)  # generated covariance diag(scale²)
    return ref, mu, scale


def test_fid_value_of_the_influence_path_equals_fid() -> None:
    rng = np.random.default_rng(1)
    ref = ReferenceStatistics.from_features(rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)))
    for n in (200, 5):  # N > D (D×D eigenproblem) and N <= D (Gram matrix)
        x = rng.normal(size=(n, 6)) + 0.4
        fid, psi = fid_influence(x, ref)
        assert fid == pytest.approx(ref.fid_to_features(x), rel=1e-9)
        assert psi.shape == (n,) and abs(psi.mean()) < 1e-9 * max(1.0, np.abs(psi).max())


def test_fid_interval_covers_the_expected_fid_at_this_n() -> None:
    """Gaussian features, exact reference N(0, I): E[FID at N] from 2,000 draws, then coverage over 300 repeats."""
    d, n = 4, 300
    ref, mu, scale = _gaussian_case(d)
    rng = np.random.default_rng(2)
    expected = np.mean([ref.fid_to_features(mu + scale * rng.normal(size=(n, d))) for _ in range(2000)])
    hits = []
    for rep in range(REPEATS):
        x = mu + scale * rng.normal(size=(n, d))
        ci = percentile_interval(fid_replicates(x, ref, resample_counts(n, 400, seed=rep)),
                                 center=ref.fid_to_features(x))
        assert ci is not None
        hits.append(ci[0] <= expected <= ci[1])
    assert 0.90 <= _coverage(hits) <= 0.99


def test_inception_score_interval_covers_the_expected_score_at_this_n(caplog: pytest.LogCaptureFixture) -> None:
    """Logits of a 10-class mixture, 240 samples in 4 splits: E[IS at N] from 2,000 draws, coverage over 300 repeats.
    Without re-centring on the score, resampled splits look less diverse and the interval misses (about 0%-10%)."""
    caplog.set_level(logging.ERROR, logger="bestckpt.metrics.inception_score")  # 60 per split: expected warning
    rng = np.random.default_rng(9)
    centers = rng.normal(size=(10, 10)) * 3
    n, splits = 240, 4

    def draw() -> np.ndarray:
        return centers[rng.integers(0, 10, size=n)] + 2 * rng.normal(size=(n, 10))

    expected = np.mean([inception_score_from_logits(draw(), splits=splits, seed=1)[0] for _ in range(2000)])
    hits = []
    for rep in range(REPEATS):
        z = draw()
        value = inception_score_from_logits(z, splits=splits, seed=1)[0]
        reps = inception_score_replicates(z, resample_counts(n, 400, seed=rep), splits=splits, seed=1)
        ci = percentile_interval(reps, center=value)
        assert ci is not None
        hits.append(ci[0] <= expected <= ci[1])
    assert 0.90 <= _coverage(hits) <= 0.99


def _naive_std(stat, x: np.ndarray, counts: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    idx = [np.repeat(np.arange(x.shape[0]), c.astype(int)) for c in counts]
    return float(np.std([stat(x[i]) for i in idx]))


def test_linearised_fid_bootstrap_matches_the_naive_one_at_small_d() -> None:
    rng = np.random.default_rng(3)
    d, n = 8, 250
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    ref = ReferenceStatistics.from_features(np.maximum(rng.normal(size=(2000, d)) @ mix, 0))
    x = np.maximum(rng.normal(size=(n, d)) @ mix + 0.3, 0)
    counts = resample_counts(n, 400, seed=0)
    linear = float(np.std(fid_replicates(x, ref, counts)))
    naive = _naive_std(ref.fid_to_features, x, counts)
    assert 0.85 <= linear / naive <= 1.15, (linear, naive)


def test_linearised_kid_bootstrap_matches_the_naive_one() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(120, 6)) + 0.5, rng.normal(size=(150, 6))
    value, _ = kid_from_features(x, y, subsets=1, subset_size=120, seed=0)
    counts = resample_counts(120, 300, seed=1)
    linear = float(np.std(kid_replicates(value, x, y, counts)))

    def whole_set_kid(xs: np.ndarray) -> float:  # the U-statistic over all rows (no subsets)
        k = (xs @ xs.T / 6 + 1) ** 3
        kxy = (xs @ y.T / 6 + 1) ** 3
        return float((k.sum() - np.trace(k)) / (len(xs) * (len(xs) - 1)) - 2 * kxy.mean())

    naive = _naive_std(whole_set_kid, x, counts)
    assert 0.85 <= linear / naive <= 1.15, (linear, naive)


def test_inception_score_replicates_are_exact() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(90, 7)) * 2
    ones = np.ones((1, 90))
    assert inception_score_replicates(z, ones, splits=3, seed=9)[0] == pytest.approx(
        inception_score_from_logits(z, splits=3, seed=9)[0], rel=1e-12)
    idx = rng.integers(0, 90, size=90)  # one resample: the metric on the repeated rows
    counts = np.bincount(idx, minlength=90)[None, :].astype(float)
    assert inception_score_replicates(z, counts, splits=1, shuffle=False)[0] == pytest.approx(
        inception_score_from_logits(z[idx], splits=1, shuffle=False)[0], rel=1e-12)


def test_kid_std_is_none_when_every_subset_is_the_whole_set(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))  # N = reference = subset size: one possible draw
    with caplog.at_level(logging.INFO, logger="bestckpt.metrics.kid"):
        mean, std = kid_from_features(x, y, subsets=10, subset_size=1000)
    assert std is None and np.isfinite(mean)
    assert "every subset is the whole of both sets" in caplog.text
    assert kid_from_features(x, y, subsets=10, subset_size=20)[1] is not None  # real subsets: a real spread
    out = METRICS["kid"].fn(  # type: ignore[misc]
        {"inception_pool": torch.from_numpy(x)}, {"inception_pool": y}, 0)
    assert set(out) == {"kid"}  # no "kid_std": 0.00


def _features(n: int, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    pool = rng.normal(size=(n, 5)) + 0.7
    ref_pool = rng.normal(size=(200, 5))
    img = rng.normal(size=(n, 8)) + 1.0
    feats = {
        "inception_pool": torch.from_numpy(pool), "inception_logits": torch.from_numpy(rng.normal(size=(n, 6))),
        "clip_image": torch.from_numpy(img), "clip_text": torch.from_numpy(img + rng.normal(size=(n, 8))),
        "lpips_distance": torch.from_numpy(np.abs(rng.normal(0.4, 0.1, size=n))),
    }
    return feats, {"inception_pool": ref_pool, "fid_statistics": ReferenceStatistics.from_features(ref_pool)}


def test_metric_intervals_hold_every_builtin_metric_and_the_composite() -> None:
    feats, ref = _features(120, np.random.default_rng(7))
    scores: dict[str, float | None] = {}
    for name in ("clip_score", "lpips", "inception_score", "fid", "kid"):
        out = METRICS[name].fn(feats, ref, 0, **({"splits": 2} if name == "inception_score" else {}))  # type: ignore[misc]
        scores.update(out if isinstance(out, dict) else {name: out})
    weights, mappings = composite_defaults()
    from bestckpt.metrics import composite_score
    scores["composite_score"] = composite_score(scores, weights, mappings)
    opts = {"inception_score": {"splits": 2}}
    ci = metric_intervals(scores, feats, ref, seed=3, options=opts, composite=(weights, mappings), resamples=300)
    assert set(ci) == {"clip_score", "lpips", "inception_score", "fid", "kid", "composite_score"}
    for name, (lo, hi) in ci.items():
        assert lo < hi and lo <= scores[name] <= hi, (name, lo, scores[name], hi)  # type: ignore[operator]
    assert ci == metric_intervals(scores, feats, ref, seed=3, options=opts, composite=(weights, mappings),
                                  resamples=300)  # seeded
    no_comp = metric_intervals({**scores, "fid": None}, feats, ref, seed=3, options=opts,
                               composite=(weights, mappings), resamples=300)
    assert "fid" not in no_comp and "composite_score" not in no_comp  # no partial composite, no made-up bound


def test_inception_score_replicates_leave_out_a_split_no_sample_fell_in() -> None:
    z = np.random.default_rng(8).normal(size=(6, 4)) * 2
    counts = np.array([[2.0, 1.0, 3.0, 0.0, 0.0, 0.0]])  # split 2 (rows 3-5) empty in this resample
    got = inception_score_replicates(z, counts, splits=2, shuffle=False)[0]
    assert got == pytest.approx(inception_score_replicates(z[:3], counts[:, :3], splits=1, shuffle=False)[0])
