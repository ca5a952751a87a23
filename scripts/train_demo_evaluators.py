#!/usr/bin/env python
"""Train the three demo evaluators on freshly generated synthetic shapes and write the shipped weights.

    python scripts/train_demo_evaluators.py                 # writes src/bestckpt/demo/weights/*.pt + manifest.json
    python scripts/train_demo_evaluators.py --out /tmp/w    # somewhere else

CPU, one thread (the machine is shared), seeded, a few minutes. Recipe (docs/demo-evaluators.md):
1. data: N images of random attribute combinations from *all* combinations (the evaluators must read the held-out
   evaluation prompts too; the held-out split only keeps them out of the *generator's* training), rendered with
   jitter (+-2 px, +-15 % scale, +-20 colour levels), then per batch Gaussian noise and blur so that the
   evaluators still read the imperfect images a tiny DiT produces.
2. demo-classifier: cross-entropy summed over the five attribute heads, AdamW + one-cycle LR.
3. demo-clip: CLIP's symmetric InfoNCE with a learned temperature; captions repeated in a batch count as positives.
4. demo-lpips: LPIPS-style non-negative per-channel weights on the classifier's stages, fitted to synthetic 2AFC
   judgments (a jittered / noisier copy of x is "closer" than a copy with one attribute changed), then scaled so
   that unrelated image pairs average 0.7.
5. save float16 weights + sha256 manifest, reload them through `bestckpt.demo.evaluators` and print the quality
   figures on fresh data (a new seed) measured with the shipped files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bestckpt.demo import data as D
from bestckpt.demo import evaluators as B

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------- data

def make_pool(n: int, seed: int, jitter: float = 1.0, split: str | None = None):
    """n random examples: uint8 images [n, 3, 32, 32], attribute indices [n, 5], captions (list of n str)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.empty(n, 3, D.IMAGE_SIZE, D.IMAGE_SIZE, dtype=torch.uint8)
    idx = torch.empty(n, len(D.ATTRIBUTE_NAMES), dtype=torch.long)
    caps = []
    for i in range(n):
        attrs = D.random_attributes(g, split)
        jit = D.random_jitter(g, jitter) if jitter > 0 else None
        imgs[i] = D.render(attrs, jitter=jit)
        idx[i] = torch.tensor(D.attrs_to_indices(attrs))
        caps.append(D.caption(attrs))
    return imgs, idx, caps


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x float [B, 3, 32, 32] in [-1, 1] -> randomly blurred and noised copy (imitates imperfect generations)."""
    b = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    alpha = (torch.rand(b, 1, 1, 1, generator=g) < 0.3).float() * torch.rand(b, 1, 1, 1, generator=g)
    x = x * (1 - alpha) + blur * alpha
    sigma = (torch.rand(b, 1, 1, 1, generator=g) < 0.5).float() * torch.rand(b, 1, 1, 1, generator=g) * 0.15
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def to_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def one_cycle(opt, steps, lr):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)


# ------------------------------------------------------------------------------------------ training

def train_classifier(imgs, idx, steps, batch, seed, log) -> B.DemoClassifierNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    net = B.DemoClassifierNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = one_cycle(opt, steps, 3e-3)
    net.train()
    for step in range(steps):
        sel = torch.randint(len(imgs), (batch,), generator=g)
        x = augment(to_float(imgs[sel]), g)
        _, heads = net(x)
        loss = sum(F.cross_entropy(heads[n], idx[sel, k]) for k, n in enumerate(D.ATTRIBUTE_NAMES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  classifier step {step:4d}/{steps} loss {loss.item():.4f}")
    return net.eval()


def train_clip(imgs, caps, steps, batch, seed, log) -> B.DemoClipNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 2)
    tok = D.Tokenizer()
    ids_all = tok.encode(caps)
    net = B.DemoClipNet(vocab_size=tok.vocab_size, max_length=tok.max_length)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = one_cycle(opt, steps, 2e-3)
    net.train()
    for step in range(steps):
        sel = torch.randint(len(imgs), (batch,), generator=g)
        x = augment(to_float(imgs[sel]), g)
        ids = ids_all[sel]
        zi, zt = net.encode_image(x), net.encode_text(ids)
        logits = net.logit_scale.clamp(max=math.log(100.0)).exp() * zi @ zt.t()  # [B, B]
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()  # duplicate captions are positives too
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  clip step {step:4d}/{steps} loss {loss.item():.4f} scale {net.logit_scale.exp().item():.1f}")
    return net.eval()


@torch.no_grad()
def _per_channel_sq(trunk, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, sum C_l]: spatial mean of squared differences of channel-normalised activations, per channel."""
    from bestckpt.metrics.lpips import normalize_channels

    fa, fb = trunk(a), trunk(b)
    return torch.cat([((normalize_channels(x) - normalize_channels(y)) ** 2).mean(dim=(2, 3))
                      for x, y in zip(fa, fb)], dim=1)


def fit_lpips(trunk, n, seed, log) -> list[torch.Tensor]:
    """Non-negative per-channel weights from synthetic 2AFC triplets (x, closer x0, farther x1)."""
    g = torch.Generator().manual_seed(seed)
    ref, ref_idx, _ = make_pool(n, seed + 10, jitter=0.5)
    x = to_float(ref)
    x0 = augment(to_float(_rerender(ref_idx, g, jitter=1.0)), g)  # same attributes, different jitter + noise
    changed = ref_idx.clone()
    which = torch.randint(len(D.ATTRIBUTE_NAMES), (n,), generator=g)
    for i in range(n):  # change exactly one attribute
        k = int(which[i])
        m = len(D.ATTRIBUTES[D.ATTRIBUTE_NAMES[k]])
        changed[i, k] = (changed[i, k] + 1 + int(torch.randint(m - 1, (1,), generator=g))) % m
    x1 = augment(to_float(_rerender(changed, g, jitter=1.0)), g)
    d0 = torch.cat([_per_channel_sq(trunk, a, b) for a, b in zip(x.split(256), x0.split(256))])
    d1 = torch.cat([_per_channel_sq(trunk, a, b) for a, b in zip(x.split(256), x1.split(256))])
    widths = list(trunk.widths)
    raw = torch.zeros(sum(widths), requires_grad=True)
    opt = torch.optim.Adam([raw], lr=0.05)
    for _ in range(300):
        w = F.softplus(raw)
        s0, s1 = d0 @ w, d1 @ w
        # LPIPS-style ranking: judge x0 closer, on a scale-free margin
        loss = F.softplus(-8.0 * (s1 - s0) / (s1 + s0 + 1e-8)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = F.softplus(raw).detach()
    agree = ((d1 @ w) > (d0 @ w)).float().mean().item()
    # scale: unrelated pairs (x vs a shuffled x) average 0.7
    perm = torch.randperm(n, generator=g)
    unrelated = torch.cat([_per_channel_sq(trunk, a, b) for a, b in zip(x.split(256), x[perm].split(256))]) @ w
    w = w * (0.7 / unrelated.mean())
    log(f"  lpips 2AFC agreement on its fit triplets {agree:.3f}")
    return list(w.split(widths))


def _rerender(idx: torch.Tensor, g: torch.Generator, jitter: float) -> torch.Tensor:
    return torch.stack([D.render(D.indices_to_attrs(r.tolist()), jitter=D.random_jitter(g, jitter)) for r in idx])


# ---------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(weights_dir: Path, seed: int, log, num_images: int = 2000, groups: int = 10) -> dict:
    """Quality figures of the weights in `weights_dir`, loaded and verified as the package loads them."""
    clf = B.DemoClassifier(weights_dir)
    clip = B.DemoClip(weights_dir)
    lp = B.DemoLpips(weights_dir)
    figs: dict = {"seed": seed}

    imgs, idx, caps = make_pool(num_images, seed, jitter=1.0)
    preds = clf.predict_attributes(imgs)
    figs["classifier_accuracy_jittered"] = {n: (preds[n] == idx[:, k]).float().mean().item()
                                            for k, n in enumerate(D.ATTRIBUTE_NAMES)}
    g = torch.Generator().manual_seed(seed + 1)
    noisy = to_uint8(to_float(imgs) + 0.1 * torch.randn(imgs.shape, generator=g))
    preds = clf.predict_attributes(noisy)
    figs["classifier_accuracy_noise0.1"] = {n: (preds[n] == idx[:, k]).float().mean().item()
                                            for k, n in enumerate(D.ATTRIBUTE_NAMES)}
    held = D.combinations("heldout")[:num_images]  # all 189 unless a miniature run asks for fewer
    refs = D.reference_images(held)
    preds = clf.predict_attributes(refs)
    hidx = torch.tensor([D.attrs_to_indices(a) for a in held])
    figs["classifier_accuracy_heldout_references"] = {n: (preds[n] == hidx[:, k]).float().mean().item()
                                                      for k, n in enumerate(D.ATTRIBUTE_NAMES)}

    # retrieval among 100 distinct random captions (10 groups), fresh jittered renders
    i2t, t2i = [], []
    for grp in range(groups):
        gg = torch.Generator().manual_seed(seed * 100 + grp)
        combos = D.combinations()
        pick = torch.randperm(len(combos), generator=gg)[:100].tolist()
        attrs = [combos[i] for i in pick]
        ims = torch.stack([D.render(a, jitter=D.random_jitter(gg, 1.0)) for a in attrs])
        sim = clip.encode_images(ims) @ clip.encode_texts([D.caption(a) for a in attrs]).t()
        i2t.append((sim.argmax(1) == torch.arange(100)).float().mean().item())
        t2i.append((sim.argmax(0) == torch.arange(100)).float().mean().item())
    figs["clip_i2t_top1_among_100"] = sum(i2t) / len(i2t)
    figs["clip_t2i_top1_among_100"] = sum(t2i) / len(t2i)
    gg = torch.Generator().manual_seed(seed + 7)
    ims = torch.stack([D.render(a, jitter=D.random_jitter(gg, 1.0)) for a in held])
    sim = clip.encode_images(ims) @ clip.encode_texts([D.caption(a) for a in held]).t()
    figs["clip_i2t_top1_among_heldout"] = (sim.argmax(1) == torch.arange(len(held))).float().mean().item()
    figs["clip_t2i_top1_among_heldout"] = (sim.argmax(0) == torch.arange(len(held))).float().mean().item()
    figs["clip_matched_cosine_mean"] = sim.diag().mean().item()
    figs["clip_unmatched_cosine_mean"] = ((sim.sum() - sim.diag().sum()) / (sim.numel() - len(held))).item()

    # demo-lpips sanity on exact held-out references
    figs["lpips_identical_max"] = lp.distance(refs, refs).max().item()
    curve = {}
    for sigma in (0.02, 0.05, 0.1, 0.2, 0.4):
        gs = torch.Generator().manual_seed(seed + 3)
        pert = to_uint8(to_float(refs) + sigma * torch.randn(refs.shape, generator=gs))
        curve[str(sigma)] = lp.distance(refs, pert).mean().item()
    figs["lpips_vs_noise_sigma"] = curve
    gj = torch.Generator().manual_seed(seed + 4)
    jittered = torch.stack([D.render(a, jitter=D.random_jitter(gj, 1.0)) for a in held])
    one_changed = []
    for k, a in enumerate(held):
        name = D.ATTRIBUTE_NAMES[k % len(D.ATTRIBUTE_NAMES)]
        vals = D.ATTRIBUTES[name]
        one_changed.append(D.render({**a, name: vals[(vals.index(a[name]) + 1) % len(vals)]},
                                    jitter=D.random_jitter(gj, 1.0)))
    d_jit = lp.distance(refs, jittered)
    d_chg = lp.distance(refs, torch.stack(one_changed))
    figs["lpips_same_attributes_jitter_mean"] = d_jit.mean().item()
    figs["lpips_one_attribute_changed_mean"] = d_chg.mean().item()
    figs["lpips_pairwise_jitter_lt_changed"] = (d_jit < d_chg).float().mean().item()
    return figs


# ---------------------------------------------------------------------------------------------- main

def save_fp16(path: Path, arch: dict, state_dict: dict) -> None:
    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in state_dict.items()}
    torch.save({"arch": arch, "state_dict": sd}, path)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"generating {args.num_images} jittered training images (seed {args.seed})")
    imgs, idx, caps = make_pool(args.num_images, args.seed, jitter=1.0)

    log(f"training demo-classifier ({args.classifier_steps} steps, batch {args.batch})")
    clf = train_classifier(imgs, idx, args.classifier_steps, args.batch, args.seed, log)
    save_fp16(out / B.WEIGHT_FILES["demo-classifier"], {"widths": list(clf.trunk.widths)}, clf.state_dict())

    log(f"training demo-clip ({args.clip_steps} steps, batch {args.clip_batch})")
    clip = train_clip(imgs, caps, args.clip_steps, args.clip_batch, args.seed, log)
    tok = D.Tokenizer()
    save_fp16(out / B.WEIGHT_FILES["demo-clip"],
              {"vocab_size": tok.vocab_size, "max_length": tok.max_length, "widths": list(clip.trunk.widths),
               "embed": clip.image_proj.out_features, "text_dim": clip.text_proj.in_features},
              clip.state_dict())

    log("fitting demo-lpips channel weights")
    # the shipped (float16-rounded) classifier is the LPIPS feature network, so fit on exactly that
    B.write_manifest(out)
    trunk = B.DemoClassifier(out).net.trunk
    lin = fit_lpips(trunk, args.lpips_triplets, args.seed + 20, log)
    save_fp16(out / B.WEIGHT_FILES["demo-lpips"], {"widths": list(trunk.widths)},
              {f"lin{i}": w for i, w in enumerate(lin)})
    B.write_manifest(out)

    log(f"evaluating the written weights on fresh data (seed {args.eval_seed})")
    figs = evaluate(out, args.eval_seed, log, args.eval_images, args.eval_groups)
    recipe = {k: v for k, v in vars(args).items() if k != "out"}
    B.write_manifest(out, {"training": {"script": "scripts/train_demo_evaluators.py", "args": recipe,
                                        "seconds": round(time.time() - t0, 1), "figures": figs}})
    print(json.dumps(figs, indent=2))
    total = sum(p.stat().st_size for p in out.glob("*.pt"))
    log(f"wrote {out} ({total / 1e6:.2f} MB of weights)")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "src" / "bestckpt" / "demo" / "weights"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=12345, help="fresh data for the printed figures")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    p.add_argument("--num-images", type=int, default=8000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classifier-steps", type=int, default=300)
    p.add_argument("--clip-batch", type=int, default=128)
    p.add_argument("--clip-steps", type=int, default=300)
    p.add_argument("--lpips-triplets", type=int, default=1024)
    p.add_argument("--eval-images", type=int, default=2000,
                   help="fresh images for the accuracy figures (also caps the held-out set used)")
    p.add_argument("--eval-groups", type=int, default=10, help="groups of 100 captions for retrieval figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
