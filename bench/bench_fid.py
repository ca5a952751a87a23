"""Benchmark: Fréchet distance on 2048-d statistics — ours (symmetric eigvalsh with a cached factor of Σ_ref) vs scipy ``sqrtm``
as pytorch-fid computes it, and vs torch-fidelity's ``eigvals(Σ₁Σ₂)``; plus repeated FID against a cached reference.

Run: ``.venv/bin/python bench/bench_fid.py [--dim 2048] [--n-gen 1000] [--threads 2]``. Prints the values (they must
agree) and the speed ratios measured in this run. Targets: ≥10× faster than sqrtm at equal value; repeated FID
against a cached reference faster still.
"""
from __future__ import annotations

import argparse
import os
import platform
import warnings

# BLAS threads for numpy/scipy must be fixed before numpy loads (2 cores shared on the dev machine).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--n-gen", type=int, default=1000, help="generated samples for the low-rank repeated-FID path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run(args)


def run(args: argparse.Namespace) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    from bestckpt.metrics import ReferenceStatistics, fid_from_statistics

    d = args.dim
    rng = np.random.default_rng(args.seed)
    # Two realistic (correlated, full-rank) covariances from 2.5*d samples each.
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x_ref = np.maximum(rng.normal(size=(int(2.5 * d), d)) @ mix, 0)  # ReLU-like, as pool3 features
    x_gen = np.maximum(rng.normal(size=(int(2.5 * d), d)) @ mix + 0.05, 0)
    mu1, s1 = x_gen.mean(0), np.cov(x_gen, rowvar=False)
    mu2, s2 = x_ref.mean(0), np.cov(x_ref, rowvar=False)
    print(f"machine: {platform.processor() or platform.machine()}, threads={args.threads}, d={d}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v_scipy, t_scipy = timed(lambda: calculate_frechet_distance(mu1, s1, mu2, s2))
    v_tf, t_tf = timed(lambda: fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2},
                                                         False)["frechet_inception_distance"])
    v_ours, t_ours = timed(lambda: fid_from_statistics(mu1, s1, mu2, s2), repeat=2)
    ref = ReferenceStatistics(mu2, s2, num_samples=x_ref.shape[0])
    _, t_factor = timed(lambda: ref.factor)
    v_rep, t_rep = timed(lambda: ref.fid_to_statistics(mu1, s1), repeat=3)
    feats = x_gen[: args.n_gen]
    from bestckpt.metrics.fid import logger as fid_logger

    fid_logger.disabled = True  # the small-N warning is expected here
    v_lr, t_lr = timed(lambda: ref.fid_to_features(feats), repeat=3)
    v_lr_ref = calculate_frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu2, s2)

    print(f"FID values: scipy sqrtm (pytorch-fid) {v_scipy:.6f} | torch-fidelity eigvals {v_tf:.6f} | "
          f"ours {v_ours:.6f} | ours vs cached reference {v_rep:.6f}")
    print(f"relative difference ours vs sqrtm: {abs(v_ours - v_scipy) / abs(v_scipy):.2e}; "
          f"vs torch-fidelity: {abs(v_ours - v_tf) / abs(v_tf):.2e}")
    print(f"time: sqrtm {t_scipy:.3f}s | eigvals {t_tf:.3f}s | ours (incl. factorising the reference) "
          f"{t_ours:.3f}s | factorise reference once {t_factor:.3f}s | ours vs cached reference {t_rep:.3f}s")
    print(f"ratio sqrtm / ours: {t_scipy / t_ours:.1f}x   (target >= 10x)")
    print(f"ratio sqrtm / ours with cached reference: {t_scipy / t_rep:.1f}x;  eigvals / cached: {t_tf / t_rep:.1f}x")
    print(f"repeated FID of N={feats.shape[0]} features vs cached reference (N x N path): {t_lr:.3f}s, "
          f"value {v_lr:.6f} vs sqrtm {v_lr_ref:.6f} (rel {abs(v_lr - v_lr_ref) / abs(v_lr_ref):.1e}); "
          f"ratio sqrtm / this: {t_scipy / t_lr:.1f}x")


if __name__ == "__main__":
    main()
