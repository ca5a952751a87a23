"""The "new best only when better beyond noise" rule (TrackerConfig.best_beyond_noise, off by default): it rejects
a tie and accepts a real improvement, through the pure policy and through the tracker (stored, adopted)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bestckpt.metrics.intervals import mean_replicates, percentile_interval, resample_counts
from bestckpt.tracking.policies import Candidate, noise_margin, select_best
from bestckpt.tracking.tracker import BestCheckpointTracker


def _cand(step: int, score: float, interval: tuple[float, float] | None) -> Candidate:
    return Candidate(step, f"{step:07d}.pt", "evaluated", score, interval=interval)


def test_policy_rejects_a_tie_and_accepts_a_real_improvement() -> None:
    first = _cand(100, 0.600, (0.580, 0.620))
    tie = _cand(200, 0.605, (0.585, 0.625))  # higher, but well inside the noise
    real = _cand(300, 0.700, (0.680, 0.720))
    assert noise_margin(tie, first, True) is not None and 0.6 + noise_margin(tie, first, True) > 0.605  # type: ignore[operator]
    assert select_best([first, tie], True, beyond_noise=True) is first
    assert select_best([first, tie], True) is tie  # the rule is off by default: strictly better wins
    assert select_best([first, tie, real], True, beyond_noise=True) is real
    # lower is better (FID): the same logic mirrored
    f1, f2, f3 = _cand(1, 50.0, (47.0, 53.0)), _cand(2, 49.0, (46.0, 52.0)), _cand(3, 40.0, (38.0, 42.0))
    assert select_best([f1, f2], False, beyond_noise=True) is f1
    assert select_best([f1, f2, f3], False, beyond_noise=True) is f3
    # no stored interval (an older record): only min_improvement applies
    assert select_best([_cand(1, 0.6, None), _cand(2, 0.605, None)], True, beyond_noise=True).step == 2  # type: ignore[union-attr]


def _evaluation(rng: np.random.Generator, quality: float, seed: int) -> tuple[float, tuple[float, float]]:
    """A per-sample metric of 200 prompt-seed pairs (noisy around ``quality``): its mean and 95% interval."""
    values = quality + 0.15 * rng.standard_normal(200)
    ci = percentile_interval(mean_replicates(values, resample_counts(200, 400, seed)))
    assert ci is not None
    return float(values.mean()), ci


def test_rule_over_repeated_evaluations_rejects_ties_and_accepts_improvements() -> None:
    """200 pairs of evaluations of equally good checkpoints, 200 of a real improvement (6 standard errors)."""
    rng = np.random.default_rng(0)
    se = 0.15 / np.sqrt(200)
    tie_accepted = improvement_accepted = 0
    for rep in range(200):
        a, b, c = (_evaluation(rng, q, 3 * rep + k) for k, q in enumerate((0.6, 0.6, 0.6 + 6 * se)))
        incumbent = _cand(1, *a)
        tie_accepted += select_best([incumbent, _cand(2, *b)], True, beyond_noise=True).step == 2  # type: ignore[union-attr]
        improvement_accepted += select_best([incumbent, _cand(2, *c)], True, beyond_noise=True).step == 2  # type: ignore[union-attr]
    # independent draws: the margin is a one-sided 97.5% test, so ≈ 2.5% of ties pass (5 of 200); 12 is 3 binomial
    # standard deviations above that. Evaluations on the same prompts and seeds are correlated: fewer pass there.
    assert tie_accepted <= 12, tie_accepted
    assert improvement_accepted >= 190


def test_tracker_applies_stores_and_adopts_the_rule(tmp_path: Path) -> None:
    def score(tracker: BestCheckpointTracker, step: int, value: float, lo: float, hi: float) -> bool:
        (tmp_path / f"{step:07d}.pt").write_bytes(b"x")
        return tracker.update_checkpoint(step, None, None, {"composite_score": value},
                                         info={"intervals": {"composite_score": [lo, hi]}})

    tracker = BestCheckpointTracker(tmp_path, save_top_k=3, keep_every_n_steps=None, best_beyond_noise=True)
    assert score(tracker, 100, 0.600, 0.580, 0.620)
    assert not score(tracker, 200, 0.605, 0.585, 0.625)  # a tie: the best stays at step 100
    assert tracker.best.step == 100  # type: ignore[union-attr]
    reopened = BestCheckpointTracker(tmp_path)  # not passed: the stored setting applies
    assert reopened.config.best_beyond_noise and reopened.best.step == 100  # type: ignore[union-attr]
    assert score(reopened, 300, 0.700, 0.680, 0.720)  # a real improvement
    assert reopened.best.step == 300  # type: ignore[union-attr]


def test_rule_is_off_by_default(tmp_path: Path) -> None:
    tracker = BestCheckpointTracker(tmp_path, save_top_k=3, keep_every_n_steps=None)
    assert not tracker.config.best_beyond_noise
    for step, value in ((100, 0.600), (200, 0.605)):
        (tmp_path / f"{step:07d}.pt").write_bytes(b"x")
        tracker.update_checkpoint(step, None, None, {"composite_score": value},
                                  info={"intervals": {"composite_score": [value - 0.02, value + 0.02]}})
    assert tracker.best.step == 200  # type: ignore[union-attr]
