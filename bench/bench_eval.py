"""Benchmark: one full evaluation (FID + IS + KID + LPIPS + CLIP score + composite) of N images.

Compares, on the same images and the same backbone weights (random weight files of the exact standard
architectures, written into a temporary ``TORCH_HOME`` because real weights cannot be downloaded here):

1. bestckpt's :class:`~bestckpt.evaluation.scorer.Scorer` — one Inception pass serves FID, KID and IS; reference
   statistics computed once and reused — vs composing torchmetrics' metric objects (``FrechetInceptionDistance``,
   ``KernelInceptionDistance``, ``InceptionScore`` — each with its own Inception pass —, ``LearnedPerceptualImagePatch
   Similarity``, ``CLIPScore``), real features kept across evaluations (``reset_real_features=False``). Target ≥ 2×.
2. bestckpt vs recomputing the reference features at every evaluation, as the original implementation did.

Run: ``.venv/bin/python bench/bench_eval.py [--n 24] [--m 24] [--size 299] [--threads 2]``. The random weights make
the metric values meaningless; the point is time, with values printed side by side as a sanity check.
``BESTCKPT_VERIFY_WEIGHTS=0`` is set inside this script only, because the random files stand in for the real ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import torch  # noqa: E402

from bestckpt.testing.networks import TensorFeatureCLIP as _TensorOutputs  # noqa: E402  torchmetrics-compatible wrapper


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour images (uint8 [n, 3, size, size]): upsampled noise, so nets see structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
            .clamp(0, 1).mul(255).round().to(torch.uint8))


def _write_weights(root: Path) -> Path:
    from torchvision.models import alexnet

    from bestckpt.testing.networks import (
        init_random_,
        write_random_hf_clip,
        write_random_inception_weights,
    )

    hub = root / "torch_home" / "hub" / "checkpoints"
    write_random_inception_weights(hub, seed=0, filename="weights-inception-2015-12-05-6726825d.pth")
    torch.save(init_random_(alexnet(weights=None), seed=0).state_dict(), hub / "alexnet-owt-7be5be79.pth")
    return write_random_hf_clip(root / "clip-vit-b-32", seed=0, architecture="vit-b-32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=24, help="generated images per evaluation")
    ap.add_argument("--m", type=int, default=24, help="reference set size (FID/KID)")
    ap.add_argument("--size", type=int, default=299, help="image side (299 = no resize for the Inception)")
    ap.add_argument("--splits", type=int, default=2, help="IS splits")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bestckpt-bench-") as tmp:
        root = Path(tmp)
        os.environ["TORCH_HOME"] = str(root / "torch_home")
        os.environ["BESTCKPT_VERIFY_WEIGHTS"] = "0"
        clip_dir = _write_weights(root)
        run(args, clip_dir)


def run(args: argparse.Namespace, clip_dir: Path) -> None:
    import logging

    from torchmetrics.image import (
        KernelInceptionDistance,
        LearnedPerceptualImagePatchSimilarity,
    )
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    from bestckpt.evaluation.scorer import Scorer

    logging.getLogger("bestckpt").setLevel(logging.ERROR)  # small-N warnings are expected here
    warnings.simplefilter("ignore")
    n, m = args.n, args.m
    gen, refs, ref_set = _images(n, args.size, 1), _images(n, args.size, 2), _images(m, args.size, 3)
    prompts = [f"a photo of object number {i} in a colourful scene" for i in range(n)]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads={args.threads}, N={n}, M={m}, "
          f"{args.size}x{args.size} images; backbones: FID Inception, LPIPS-alex, CLIP ViT-B/32 (random weights)")

    # --- bestckpt
    scorer = Scorer(backbones={"inception": "inception-2015-12-05", "clip": f"hf:{clip_dir}", "lpips": "lpips-alex"},
                    metric_options={"kid": {"subsets": 100, "subset_size": n},
                                    "inception_score": {"splits": args.splits}})
    t = time.perf_counter()
    for kind in ("inception", "clip", "lpips"):
        scorer.backbone(kind)
    ref = scorer.reference_statistics(ref_set)  # once per run (and cached on disk across runs)
    t_setup_ours = time.perf_counter() - t

    def ours() -> dict:
        return dict(scorer.score(scorer.features(gen, prompts, refs), ref, seed=0))

    def original_like() -> dict:
        scorer._memory_refs.clear()  # no cache: reference features recomputed for every evaluation
        fresh = scorer.reference_statistics(ref_set)
        return dict(scorer.score(scorer.features(gen, prompts, refs), fresh, seed=0))

    # --- torchmetrics, same weight files
    def load_clip() -> tuple[torch.nn.Module, CLIPProcessor]:
        return _TensorOutputs(CLIPModel.from_pretrained(clip_dir)), CLIPProcessor.from_pretrained(clip_dir)

    t = time.perf_counter()
    fid = FrechetInceptionDistance(feature=2048, reset_real_features=False)
    kid = KernelInceptionDistance(feature=2048, subsets=100, subset_size=n, reset_real_features=False)
    isc = InceptionScore(feature="logits_unbiased", splits=args.splits)
    lp = LearnedPerceptualImagePatchSimilarity(net_type="alex")
    cs = CLIPScore(model_name_or_path=load_clip)
    fid.update(ref_set, real=True)
    kid.update(ref_set, real=True)
    t_setup_tm = time.perf_counter() - t

    def tm() -> dict:
        for metric in (fid, kid, isc, lp, cs):
            metric.reset()  # real features survive (reset_real_features=False)
        fid.update(gen, real=False)
        kid.update(gen, real=False)
        isc.update(gen)
        lp.update(gen.float() / 127.5 - 1, refs.float() / 127.5 - 1)
        cs.update(list(gen), prompts)
        k_mean, _ = kid.compute()
        is_mean, _ = isc.compute()
        return {"fid": float(fid.compute()), "kid": float(k_mean), "inception_score": float(is_mean),
                "lpips": float(lp.compute()), "clip_score": float(cs.compute()) / 100}

    timings = {}
    values = {}
    for name, fn in (("bestckpt", ours), ("torchmetrics", tm), ("recompute-reference", original_like)):
        t = time.perf_counter()
        values[name] = fn()
        timings[name] = time.perf_counter() - t
        print(f"{name:>20}: {timings[name]:7.2f} s  " + "  ".join(
            f"{k}={v:.5g}" for k, v in sorted(values[name].items()) if v is not None and not k.endswith("_std")))
    print(f"setup (build backbones + reference statistics, once per run): bestckpt {t_setup_ours:.1f}s, "
          f"torchmetrics {t_setup_tm:.1f}s")
    print(f"ratio torchmetrics / bestckpt per evaluation: {timings['torchmetrics'] / timings['bestckpt']:.2f}x "
          f"(target >= 2x)")
    print(f"ratio recompute-reference / bestckpt per evaluation: "
          f"{timings['recompute-reference'] / timings['bestckpt']:.2f}x")
    print("note: torchmetrics' LPIPS has no convention difference; its CLIPScore is 100*cos clamped (divided by 100 "
          "above); its KID subsets are drawn unseeded, so KID values differ slightly by design.")


if __name__ == "__main__":
    main()
