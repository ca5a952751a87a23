"""FID and KID parity with torch-fidelity and pytorch-fid, numerical honesty and small-sample warnings."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bestckpt.metrics import (
    NumericalError,
    ReferenceStatistics,
    fid_from_features,
    fid_from_statistics,
    kid_from_features,
)


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def _stats(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"mu": x.mean(axis=0), "sigma": np.cov(x, rowvar=False)}


@pytest.mark.parametrize("d", [16, 64])
def test_fid_matches_torch_fidelity_and_pytorch_fid(d: int) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    a, b = _features(4 * d, d, 0, 0.3), _features(5 * d, d, 1)
    sa, sb = _stats(a), _stats(b)
    ours = fid_from_statistics(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    tf = fid_statistics_to_metric(sa, sb, False)["frechet_inception_distance"]
    pf = calculate_frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    assert ours == pytest.approx(tf, rel=1e-6)
    assert ours == pytest.approx(pf, rel=1e-6)
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(tf, rel=1e-6)


def test_fid_low_rank_fast_path_matches_full_path(caplog: pytest.LogCaptureFixture) -> None:
    """N < D uses an N×N eigenproblem; it must equal the D×D computation (and warn about the sample size)."""
    d = 96
    ref = ReferenceStatistics.from_features(_features(300, d, 2))
    x = _features(40, d, 3, 0.1)
    with caplog.at_level(logging.WARNING, logger="bestckpt.metrics.fid"):
        fast = ref.fid_to_features(x)
    assert "N=40" in caplog.text and "KID" in caplog.text
    full = ref.fid_to_statistics(x.mean(axis=0), np.cov(x, rowvar=False))
    # The D×D path takes sqrt of D-N round-off "zero" eigenvalues (≈√1e-14 each); the N×N path has none of them.
    assert fast == pytest.approx(full, rel=1e-7)
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    tf = fid_statistics_to_metric(_stats(x), {"mu": ref.mu, "sigma": ref.sigma}, False)["frechet_inception_distance"]
    assert fast == pytest.approx(tf, rel=1e-5)


def test_fid_identical_sets_is_zero_and_cached_reference_roundtrip() -> None:
    x = _features(200, 32, 4)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    ref = ReferenceStatistics.from_features(x)
    again = ReferenceStatistics.from_arrays(ref.to_arrays())
    y = _features(150, 32, 5, 0.2)
    assert again.fid_to_features(y) == ref.fid_to_features(y)


def test_fid_rejects_non_psd_statistics_instead_of_dropping_imaginary_parts() -> None:
    d = 8
    sigma_bad = -np.eye(d)  # not a covariance: sqrt would be purely imaginary
    with pytest.raises(NumericalError, match="positive"):
        fid_from_statistics(np.zeros(d), np.eye(d), np.zeros(d), sigma_bad)


def test_fid_input_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="dimension"):
        fid_from_features(_features(10, 4, 0), _features(10, 5, 0))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((4, 3), np.nan), _features(10, 3, 0))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(_features(1, 3, 0), _features(10, 3, 0))


@pytest.mark.parametrize("n1,n2,subset", [(60, 80, 50), (120, 100, 100)])
def test_kid_matches_torch_fidelity_with_same_subsets(n1: int, n2: int, subset: int) -> None:
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, b = _features(n1, 24, 6, 0.2), _features(n2, 24, 7)
    mean, std = kid_from_features(torch.from_numpy(a), torch.from_numpy(b), subsets=20, subset_size=subset, seed=11)
    ref = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=subset,
                                 rng_seed=11, verbose=False)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


def test_kid_per_subset_path_equals_full_kernel_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import bestckpt.metrics.kid as kid_mod

    a, b = _features(50, 16, 8), _features(60, 16, 9, 0.5)
    full = kid_from_features(a, b, subsets=7, subset_size=30, seed=3)
    monkeypatch.setattr(kid_mod, "_FULL_KERNEL_MAX_ENTRIES", 0)
    per = kid_from_features(a, b, subsets=7, subset_size=30, seed=3)
    assert per == pytest.approx(full, rel=1e-10)


def test_kid_adapts_subset_size_with_warning_and_is_seeded(caplog: pytest.LogCaptureFixture) -> None:
    a, b = _features(20, 8, 10, 1.0), _features(30, 8, 11)
    with caplog.at_level(logging.WARNING, logger="bestckpt.metrics.kid"):
        m1 = kid_from_features(a, b, subsets=10, subset_size=1000, seed=1)
    assert "subset_size=20" in caplog.text
    assert kid_from_features(a, b, subsets=10, subset_size=1000, seed=1) == m1
    assert kid_from_features(a, b, subsets=10, subset_size=1000, seed=2) != m1
    assert m1[0] > 0  # shifted distributions
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(a[:1], b)


def test_fid_with_rank_deficient_reference_uses_eigh_factor() -> None:
    """A reference with N <= D has a singular covariance: no Cholesky, the eigh factor V·√Λ is used instead."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    d = 64
    ref_x, gen_x = _features(40, d, 12), _features(200, d, 13, 0.2)
    ref = ReferenceStatistics.from_features(ref_x)
    assert np.allclose(ref.factor @ ref.factor.T, ref.sigma, atol=1e-10)
    ours = ref.fid_to_features(gen_x)
    tf = fid_statistics_to_metric(_stats(gen_x), _stats(ref_x), False)["frechet_inception_distance"]
    assert ours == pytest.approx(tf, rel=1e-6)
