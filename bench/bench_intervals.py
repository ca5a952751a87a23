"""Benchmark: the cost of the bootstrap confidence intervals relative to one evaluation. Target: <= 10%.

Two cases:

1. The demo (``bestckpt demo``'s protocol: 189 held-out prompts x 1 seed, 128-d pool features, 35 logits): one
   evaluation is a real :func:`~bestckpt.evaluation.evaluate.evaluate_checkpoint` of a demo checkpoint (sampling
   with the demo sampler, the demo evaluators' features, all metrics) with intervals off; the intervals' cost is
   ``Scorer.score`` with intervals on minus off, on the same features.
2. 2048-d Inception features at N = 2,500 (synthetic ReLU-like features, 2,500 reference rows, 1008 logits; CLIP and
   LPIPS per-sample values): the intervals (FID linearised from one eigendecomposition, KID linearised, IS exact,
   means exact, composite, 1000 resamples) against (a) the scoring step alone (FID + KID + IS + CLIP + LPIPS from
   features, reference statistics cached) — the strictest bar, since sampling is left out — and (b) scoring plus the
   FID Inception's feature pass over the 2,500 images on this machine (measured per image on a small batch with the
   real architecture and random weights; sampling the images, which costs more, is still left out). The naive
   bootstrap's cost (one FID with its eigenvalue problem per resample) is printed for comparison.

Run: ``.venv/bin/python bench/bench_intervals.py [--threads 2] [--n 2500] [--resamples 1000] [--skip-inception]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import timed  # noqa: E402


def demo_case(resamples: int, root: Path) -> None:
    from bestckpt.demo import recipe
    from bestckpt.demo.data import Tokenizer
    from bestckpt.demo.model import DiTConfig, TinyDiT
    from bestckpt.demo.sampler import make_sampler
    from bestckpt.demo.train import DEMO_BACKBONES, build_protocol
    from bestckpt.evaluation.evaluate import evaluate_checkpoint, prepare_reference_statistics
    from bestckpt.evaluation.scorer import Scorer

    args = recipe.resolve_defaults(recipe.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--run-dir", str(root / "run")]))
    protocol = build_protocol(args, root / "protocol")
    tok = Tokenizer()
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=tok.vocab_size, max_tokens=tok.max_length, pad_id=Tokenizer.PAD,
                    hidden=args.hidden, depth=args.depth, heads=4, patch_size=4)
    ckpt = root / "0000100.pt"
    torch.save({"model": TinyDiT(cfg).state_dict(), "ema": None, "model_config": asdict(cfg)}, ckpt)
    off = Scorer(metrics=protocol.metrics, backbones=dict(DEMO_BACKBONES), intervals=False)
    on = Scorer(metrics=protocol.metrics, backbones=dict(DEMO_BACKBONES), interval_resamples=resamples)
    ref = prepare_reference_statistics(protocol, off)
    sampler = make_sampler()
    evaluate_checkpoint(ckpt, 100, protocol, sampler, off, ref, dist=None, batch_size=64)  # warm-up
    result, t_eval = timed(lambda: evaluate_checkpoint(ckpt, 100, protocol, sampler, off, ref, dist=None,
                                                        batch_size=64))
    assert result.ok, result.error
    gen = torch.randint(0, 256, (protocol.num_samples, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                        dtype=torch.uint8)
    refs = torch.randint(0, 256, gen.shape, generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    feats = off.features(gen, list(protocol.sample_prompts), refs)
    _, t_off = timed(lambda: off.score(feats, ref, seed=0), repeat=3)
    scores, t_on = timed(lambda: on.score(feats, ref, seed=0), repeat=3)
    cost = max(t_on - t_off, 0.0)
    print(f"demo: N={protocol.num_samples}, pool {feats['inception_pool'].shape[1]}-d, "
          f"logits {feats['inception_logits'].shape[1]}, {resamples} resamples")
    print(f"  one evaluation (sample + featurise + score, intervals off): {t_eval:.2f} s")
    print(f"  intervals: {cost * 1e3:.0f} ms (score with intervals {t_on * 1e3:.0f} ms, without {t_off * 1e3:.0f} ms)"
          f" -> {len(scores.intervals)} intervals: {sorted(scores.intervals)}")
    print(f"  ratio intervals / evaluation: {cost / t_eval:.3%}  (target <= 10%)")


def _inception_seconds_per_image(root: Path, batch: int = 8) -> float:
    from bestckpt.backbones import get_backbone
    from bestckpt.testing.networks import write_random_inception_weights

    hub = root / "torch_home" / "hub" / "checkpoints"
    write_random_inception_weights(hub, seed=0, filename="weights-inception-2015-12-05-6726825d.pth")
    os.environ["TORCH_HOME"] = str(root / "torch_home")
    os.environ["BESTCKPT_VERIFY_WEIGHTS"] = "0"
    net = get_backbone("inception", "inception-2015-12-05")
    images = torch.randint(0, 256, (batch, 3, 299, 299), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    net.features(images[:2])  # warm-up
    _, t = timed(lambda: net.features(images))
    return t / batch


def inception_case(n: int, resamples: int, root: Path, with_inception: bool) -> None:
    from bestckpt.metrics import DEFAULT_METRICS, METRICS, ReferenceStatistics, composite_defaults, composite_score
    from bestckpt.metrics.bootstrap import metric_intervals

    d, c = 2048, 1008
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    ref_pool = np.maximum(rng.normal(size=(n, d)) @ mix, 0)
    img = rng.normal(size=(n, 64))
    feats = {
        "inception_pool": torch.from_numpy(np.maximum(rng.normal(size=(n, d)) @ mix + 0.05, 0)),
        "inception_logits": torch.from_numpy(rng.normal(size=(n, c)) * 3),
        "clip_image": torch.from_numpy(img), "clip_text": torch.from_numpy(img + rng.normal(size=(n, 64))),
        "lpips_distance": torch.from_numpy(np.abs(rng.normal(0.4, 0.1, size=n))),
    }
    stats = ReferenceStatistics.from_features(ref_pool)
    _ = stats.factor  # cached with the reference, as the Scorer does
    ref = {"inception_pool": ref_pool, "fid_statistics": stats}

    def score() -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in DEFAULT_METRICS:
            if name != "composite_score":
                v = METRICS[name].fn(feats, ref, 0)  # type: ignore[misc]
                out.update(v if isinstance(v, dict) else {name: v})
        out["composite_score"] = composite_score(out, *composite_defaults())
        return out

    scores, t_score = timed(score)
    ci, t_ci = timed(lambda: metric_intervals(scores, feats, ref, seed=0, composite=composite_defaults(),
                                               resamples=resamples))
    x = feats["inception_pool"].numpy()
    _, t_fid = timed(lambda: stats.fid_to_features(x))
    print(f"2048-d Inception features: N={n}, reference {n}, logits {c}, {resamples} resamples")
    print(f"  scoring alone (FID+KID+IS+CLIP+LPIPS+composite): {t_score:.2f} s; intervals: {t_ci:.2f} s "
          f"-> {sorted(ci)}")
    print(f"  FID {scores['fid']:.2f} [{ci['fid'][0]:.2f}, {ci['fid'][1]:.2f}]; naive bootstrap would cost "
          f"{resamples} x {t_fid:.2f} s = {resamples * t_fid:.0f} s")
    print(f"  ratio intervals / scoring alone: {t_ci / t_score:.1%}")
    if with_inception:
        per_image = _inception_seconds_per_image(root)
        t_eval = n * per_image + t_score
        print(f"  FID Inception feature pass: {per_image:.3f} s/image here -> evaluation without sampling "
              f">= {t_eval:.0f} s")
        print(f"  ratio intervals / evaluation (featurise + score, sampling not counted): {t_ci / t_eval:.2%}  "
              f"(target <= 10%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2500, help="samples of the 2048-d case")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--skip-inception", action="store_true", help="do not time the FID Inception's feature pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("bestckpt").setLevel(logging.ERROR)  # small-sample notes are expected here
    warnings.simplefilter("ignore")
    print(f"machine: {platform.processor() or platform.machine()}, threads={args.threads}")
    with tempfile.TemporaryDirectory(prefix="bestckpt-bench-ci-") as tmp:
        demo_case(args.resamples, Path(tmp))
        inception_case(args.n, args.resamples, Path(tmp), not args.skip_inception)


if __name__ == "__main__":
    main()
