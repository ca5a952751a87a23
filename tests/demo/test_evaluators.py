"""The shipped demo evaluators, measured on FRESH synthetic data (seeds never used in training).

Thresholds (docs/demo-evaluators.md) sit a little under what scripts/train_demo_evaluators.py measures on 2000
fresh images, so they catch a broken or mis-loaded network without flaking on sampling noise:
- classifier attribute accuracy on jittered renders: >= 0.97 per attribute (shape >= 0.95); with Gaussian noise
  sigma 0.1: >= 0.93; on the exact held-out reference renders: >= 0.97;
- CLIP-style top-1 retrieval among 100 distinct random captions and among all held-out captions, both directions:
  >= 0.95.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from bestckpt.demo import data as D
from bestckpt.demo import evaluators as B
from bestckpt.fsio import sha256_file

FRESH_SEED = 4242  # not the training seed (0) nor the script's evaluation seed (12345)


def _fresh(n: int, seed: int, jitter: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    attrs = [D.random_attributes(g, None) for _ in range(n)]
    imgs = torch.stack([D.render(a, jitter=D.random_jitter(g, jitter)) for a in attrs])
    return imgs, attrs


def _noisy(imgs: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = imgs.float() / 127.5 - 1.0 + sigma * torch.randn(imgs.shape, generator=g)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier():
    return B.DemoClassifier()


@pytest.fixture(scope="module")
def clip():
    return B.DemoClip()


@pytest.fixture(scope="module")
def lpips():
    return B.DemoLpips()


@pytest.fixture(scope="module")
def fresh():
    return _fresh(600, FRESH_SEED)


def _accuracy(classifier, imgs, attrs) -> dict[str, float]:
    preds = classifier.predict_attributes(imgs)
    idx = torch.tensor([D.attrs_to_indices(a) for a in attrs])
    return {n: (preds[n] == idx[:, k]).float().mean().item() for k, n in enumerate(D.ATTRIBUTE_NAMES)}


# ------------------------------------------------------------------------------------- shipped files

def test_shipped_weights_small_and_listed_with_checksums():
    manifest = json.loads((B.DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())
    total = 0
    for fname in B.WEIGHT_FILES.values():
        path = B.DEFAULT_WEIGHTS_DIR / fname
        assert manifest["files"][fname]["sha256"] == sha256_file(path)
        total += path.stat().st_size
    assert total < 2_000_000


def test_corrupted_missing_or_unlisted_weights_raise_clear_errors(tmp_path):
    wdir = tmp_path / "w"
    shutil.copytree(B.DEFAULT_WEIGHTS_DIR, wdir)
    assert B.DemoClip(wdir).cache_id.startswith("demo-clip-")  # the intact copy loads
    blob = bytearray((wdir / "demo-clip.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (wdir / "demo-clip.pt").write_bytes(bytes(blob))
    with pytest.raises(B.DemoWeightsError, match=r"demo-clip\.pt are corrupt: sha256 .*train_demo_evaluators"):
        B.build_demo_backbone("demo-clip", weights_dir=wdir)
    (wdir / "demo-classifier.pt").unlink()
    with pytest.raises(B.DemoWeightsError, match="demo-classifier.pt are missing"):
        B.DemoLpips(wdir)  # demo-lpips needs the classifier's file too
    (wdir / "manifest.json").write_text("{not json")
    with pytest.raises(B.DemoWeightsError, match="no valid sha256 for demo-lpips.pt"):
        B.DemoLpips(wdir)
    (wdir / "manifest.json").unlink()
    with pytest.raises(B.DemoWeightsError, match="manifest .* is missing"):
        B.verify_weights(wdir, "demo-lpips.pt")
    with pytest.raises(ValueError, match="demo-gan"):
        B.build_demo_backbone("demo-gan")


def test_registered_with_backbone_registry(tmp_path):
    from bestckpt.backbones import available_backbones, get_backbone

    assert "demo-classifier" in available_backbones("inception")
    assert "demo-clip" in available_backbones("clip")
    assert "demo-lpips" in available_backbones("lpips")
    assert isinstance(get_backbone("inception", "demo-classifier"), B.DemoClassifier)
    assert isinstance(get_backbone("clip", "demo-clip"), B.DemoClip)
    # a weights_dir without a demo manifest (e.g. the standard backbones' cache) falls back to the shipped files
    lp = get_backbone("lpips", "demo-lpips", weights_dir=tmp_path)
    assert isinstance(lp, B.DemoLpips) and lp.weights_dir == B.DEFAULT_WEIGHTS_DIR


def test_inputs_must_be_uint8(classifier, clip, lpips):
    imgs = D.reference_images(D.combinations("heldout")[:2])
    with pytest.raises(TypeError, match="uint8"):
        classifier.features(imgs.float())
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        clip.encode_images(imgs[:, :1])
    with pytest.raises(ValueError, match="same number"):
        lpips.distance(imgs, imgs[:1])
    with pytest.raises(ValueError, match="list of strings"):
        clip.encode_texts("a red circle")


def test_empty_inputs_give_empty_outputs(classifier, clip, lpips):
    """An empty distributed shard featurises to correctly shaped empty tensors (concatenation still works)."""
    none = torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    out = classifier.features(none)
    assert out["pool"].shape == (0, 128) and out["logits"].shape == (0, 35)
    assert clip.encode_images(none).shape == (0, 64) and clip.encode_texts([]).shape == (0, 64)
    assert lpips.distance(none, none).shape == (0,)


# --------------------------------------------------------------------------------------- classifier

def test_classifier_attribute_accuracy_on_fresh_data(classifier, fresh):
    imgs, attrs = fresh
    acc = _accuracy(classifier, imgs, attrs)
    for name, value in acc.items():
        assert value >= (0.95 if name == "shape" else 0.97), acc
    acc_noisy = _accuracy(classifier, _noisy(imgs, 0.1, FRESH_SEED + 1), attrs)
    assert min(acc_noisy.values()) >= 0.93, acc_noisy
    held = D.combinations("heldout")
    acc_held = _accuracy(classifier, D.reference_images(held), held)
    assert min(acc_held.values()) >= 0.97, acc_held


def test_classifier_features_contract(classifier, fresh):
    imgs = fresh[0][:40]
    out = classifier.features(imgs)
    assert out["pool"].shape == (40, 128) and out["logits"].shape == (40, 35)
    assert torch.isfinite(out["pool"]).all() and torch.isfinite(out["logits"]).all()
    # per-sample: a sample's features do not depend on the rest of the batch
    part = classifier.features(imgs[7:9])
    torch.testing.assert_close(part["pool"], out["pool"][7:9], rtol=1e-4, atol=1e-5)
    # joint logits are log-probabilities of (shape, colour) and their argmax is the (shape, colour) prediction
    torch.testing.assert_close(out["logits"].exp().sum(1), torch.ones(40), rtol=1e-4, atol=1e-4)
    pred = classifier.predict_attributes(imgs)
    assert torch.equal(out["logits"].argmax(1), pred["shape"] * 7 + pred["color"])
    # other sizes are resized: a 2x nearest upscale reads the same
    big = imgs.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert (classifier.predict_attributes(big)["shape"] == pred["shape"]).float().mean() >= 0.9


def test_inception_score_is_meaningful(classifier):
    from bestckpt.metrics import inception_score_from_logits

    base = {"size": "large", "position": "center", "background": "white"}
    diverse = [dict(base, shape=s, color=c) for s in D.ATTRIBUTES["shape"] for c in D.ATTRIBUTES["color"]] * 4
    collapsed = [dict(base, shape="circle", color="red")] * len(diverse)
    is_div, _ = inception_score_from_logits(classifier.features(D.reference_images(diverse))["logits"], splits=1)
    is_col, _ = inception_score_from_logits(classifier.features(D.reference_images(collapsed))["logits"], splits=1)
    assert is_div > 25.0  # ceiling 35: confident and covering every shape/colour pair
    assert is_col < 1.1  # one class only


# -------------------------------------------------------------------------------------- CLIP-style

def test_clip_retrieval_on_fresh_data(clip):
    combos = D.combinations()
    i2t, t2i = [], []
    for grp in range(3):
        g = torch.Generator().manual_seed(FRESH_SEED + 100 + grp)
        attrs = [combos[i] for i in torch.randperm(len(combos), generator=g)[:100].tolist()]
        imgs = torch.stack([D.render(a, jitter=D.random_jitter(g, 1.0)) for a in attrs])
        sim = clip.encode_images(imgs) @ clip.encode_texts([D.caption(a) for a in attrs]).t()
        i2t.append((sim.argmax(1) == torch.arange(100)).float().mean().item())
        t2i.append((sim.argmax(0) == torch.arange(100)).float().mean().item())
    assert sum(i2t) / 3 >= 0.95 and sum(t2i) / 3 >= 0.95, (i2t, t2i)

    held = D.combinations("heldout")
    g = torch.Generator().manual_seed(FRESH_SEED + 200)
    imgs = torch.stack([D.render(a, jitter=D.random_jitter(g, 1.0)) for a in held])
    zi, zt = clip.encode_images(imgs), clip.encode_texts([D.caption(a) for a in held])
    torch.testing.assert_close(zi.norm(dim=1), torch.ones(len(held)))
    torch.testing.assert_close(zt.norm(dim=1), torch.ones(len(held)))
    sim = zi @ zt.t()
    n = len(held)
    assert (sim.argmax(1) == torch.arange(n)).float().mean() >= 0.95
    assert (sim.argmax(0) == torch.arange(n)).float().mean() >= 0.95
    # CLIP score (paired cosine) separates right from wrong captions
    from bestckpt.metrics import clip_score

    right = clip_score(zi, zt)
    wrong = clip_score(zi, zt.roll(1, dims=0))
    assert right > 0.6 and wrong < right - 0.4, (right, wrong)


# ---------------------------------------------------------------------------------------- LPIPS-style

def test_lpips_properties(lpips):
    held = D.combinations("heldout")[:96]
    refs = D.reference_images(held)
    assert torch.equal(lpips.distance(refs, refs), torch.zeros(len(held)))
    means = [lpips.distance(refs, _noisy(refs, s, FRESH_SEED + 3)).mean().item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(means, means[1:])), means
    g = torch.Generator().manual_seed(FRESH_SEED + 4)
    jittered = torch.stack([D.render(a, jitter=D.random_jitter(g, 1.0)) for a in held])
    changed = []
    for k, a in enumerate(held):
        name = D.ATTRIBUTE_NAMES[k % len(D.ATTRIBUTE_NAMES)]
        vals = D.ATTRIBUTES[name]
        changed.append(D.render({**a, name: vals[(vals.index(a[name]) + 1) % len(vals)]},
                                jitter=D.random_jitter(g, 1.0)))
    changed = torch.stack(changed)
    d_jit, d_chg = lpips.distance(refs, jittered), lpips.distance(refs, changed)
    assert (d_jit >= 0).all() and (d_chg >= 0).all()
    assert d_chg.mean() > 2 * d_jit.mean(), (d_chg.mean(), d_jit.mean())
    assert (d_jit < d_chg).float().mean() >= 0.85
    torch.testing.assert_close(lpips.distance(changed, refs), d_chg)  # symmetric
    torch.testing.assert_close(lpips.distance(refs[:5], changed[:5]), d_chg[:5])  # per pair, batch-independent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_demo_evaluators_on_cuda_match_cpu(classifier, clip, lpips, fresh):
    imgs = fresh[0][:64]
    caps = [D.caption(a) for a in fresh[1][:64]]
    on_gpu = {name: B.build_demo_backbone(name, device="cuda") for name in B.WEIGHT_FILES}
    f_cpu, f_gpu = classifier.features(imgs), on_gpu["demo-classifier"].features(imgs)
    assert f_gpu["pool"].device.type == "cpu"  # outputs come back to the CPU like the standard backbones'
    torch.testing.assert_close(f_gpu["pool"], f_cpu["pool"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(f_gpu["logits"], f_cpu["logits"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(on_gpu["demo-clip"].encode_images(imgs), clip.encode_images(imgs), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(on_gpu["demo-clip"].encode_texts(caps), clip.encode_texts(caps), rtol=1e-2, atol=1e-2)
    flipped = imgs.flip(-1)
    torch.testing.assert_close(on_gpu["demo-lpips"].distance(imgs, flipped), lpips.distance(imgs, flipped),
                               rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------------------- FID / KID via metrics

def test_fid_kid_is_on_demo_features_separate_real_from_noise(classifier, fresh):
    from bestckpt.metrics import (
        fid_from_features,
        inception_score_from_logits,
        kid_from_features,
    )

    real_a = classifier.features(fresh[0][:300])["pool"]
    real_b = classifier.features(_fresh(300, FRESH_SEED + 5)[0])["pool"]
    g = torch.Generator().manual_seed(FRESH_SEED + 6)
    noise = classifier.features(torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8))["pool"]
    # a blurry/"half-learned" set: references mixed with noise (what an early checkpoint looks like)
    mid = classifier.features(_noisy(_fresh(300, FRESH_SEED + 7)[0], 0.35, FRESH_SEED + 8))["pool"]
    fid_rr, fid_rm, fid_rn = (fid_from_features(x, real_a) for x in (real_b, mid, noise))
    assert fid_rr < fid_rm < fid_rn and fid_rr < 0.05 * fid_rn, (fid_rr, fid_rm, fid_rn)
    kid_rr, _ = kid_from_features(real_b, real_a, subsets=20, subset_size=100, seed=0)
    kid_rn, _ = kid_from_features(noise, real_a, subsets=20, subset_size=100, seed=0)
    assert kid_rr < 0.05 * kid_rn, (kid_rr, kid_rn)
    is_real, _ = inception_score_from_logits(classifier.features(fresh[0][:300])["logits"], splits=3)
    is_noise, _ = inception_score_from_logits(
        classifier.features(torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8))["logits"],
        splits=3)
    assert is_real > 3 * is_noise, (is_real, is_noise)


# ------------------------------------------------------------------------------------- training script

def test_training_script_runs_end_to_end_in_miniature(tmp_path, capsys):
    """The script that produced the shipped weights still runs, writes verifiable files and reports figures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_evaluators.py"
    spec = importlib.util.spec_from_file_location("train_demo_evaluators", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "weights"
    args = script.parse_args(["--out", str(out), "--num-images", "128", "--batch", "16", "--classifier-steps", "3",
                              "--clip-batch", "16", "--clip-steps", "3", "--lpips-triplets", "32",
                              "--eval-images", "32", "--eval-groups", "1"])
    assert script.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(B.WEIGHT_FILES.values())
    figs = manifest["training"]["figures"]
    assert set(figs["classifier_accuracy_jittered"]) == set(D.ATTRIBUTE_NAMES)
    assert 0.0 <= figs["clip_i2t_top1_among_100"] <= 1.0 and figs["lpips_identical_max"] == 0.0
    for name in B.WEIGHT_FILES:  # the new files load through the package (checksums verified)
        backbone = B.build_demo_backbone(name, weights_dir=out)
        assert backbone.weights_dir == out
    assert "classifier_accuracy_jittered" in capsys.readouterr().out
