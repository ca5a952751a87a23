"""The constructed case of ``bestckpt finalize``'s test (docs/finalize.md, "The test case"): two demo checkpoints,
one truly better, and a tiny training protocol built so that it ranks them the wrong way.

- ``late`` and ``early``: one short training run of a small demo DiT (the demo's data, loss and sampler),
  saved after ``LATE`` and after ``EARLY`` steps. The later one is truly better: over the whole held-out set
  (one image per prompt, seed ``derive_seed(0, 0)``) the demo classifier reads its images' attributes right more
  often (:func:`attribute_accuracy`, checked by the test).
- The tiny training protocol: one sample (the size of a careless training evaluation), drawn with seed
  ``derive_seed(0, 0)``. Its prompt is the held-out prompt on which the *early* checkpoint's image at that seed is
  closest to its prompt under the demo CLIP (the largest per-sample CLIP cosine margin over the late one). On it
  the worse checkpoint wins: a construction from the same images, not a searched-for seed.
- The full protocol: every held-out prompt (189 samples), tracked metric ``clip_score``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from bestckpt.demo.data import ATTRIBUTE_NAMES, Tokenizer, attrs_to_indices, eval_prompts
from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.sampler import DemoSampler  # noqa: F401  (the tests build it from here)
from bestckpt.demo.train import DEMO_BACKBONES, _TrainData, flow_matching_loss, save_checkpoint
from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning, derive_seed
from bestckpt.evaluation.sampler import SamplerSettings

EARLY, LATE = 5, 50
SETTINGS = SamplerSettings(num_steps=6, guidance_scale=3.0, image_size=32)
HELDOUT = eval_prompts(189, seed=0)  # every held-out combination


def train(out_dir: Path) -> dict[int, Path]:
    """Train a small demo DiT (seeded, one thread) and save it after EARLY and LATE steps: {step: file}."""
    torch.manual_seed(0)
    tok = Tokenizer()
    data = _TrainData(tok, 0)
    cfg = DiTConfig(vocab_size=tok.vocab_size, max_tokens=tok.max_length, hidden=64, depth=2, text_hidden=64)
    model = TinyDiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    saved = {}
    for step in range(1, LATE + 1):
        x, tokens, g = data.batch(step, 32)
        drop = torch.rand(32, generator=g) < 0.1
        loss = flow_matching_loss(model, x, tokens, drop, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (EARLY, LATE):
            path = out_dir / f"{step:07d}.pt"
            save_checkpoint(path, {"model": model.state_dict(), "ema": None, "step": step, "epoch": 0,
                                   "model_config": cfg.to_dict()})
            saved[step] = path
    return saved


def sample(path: Path, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    return DemoSampler()(path, prompts, seeds, SETTINGS).images


def clip_cosines(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    from bestckpt.demo.evaluators import DemoClip

    clip = DemoClip()
    return (clip.encode_images(images) * clip.encode_texts(prompts)).sum(dim=1)


def scan(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per held-out prompt, the image at seed ``derive_seed(0, 0)``: (CLIP cosine with its prompt [189],
    all attributes read right by the demo classifier [189, 5] bool)."""
    from bestckpt.demo.evaluators import DemoClassifier

    prompts = [c for c, _ in HELDOUT]
    images = sample(path, prompts, [derive_seed(0, 0)] * len(prompts))
    pred = DemoClassifier().predict_attributes(images)
    truth = torch.tensor([attrs_to_indices(a) for _, a in HELDOUT])
    right = torch.stack([pred[name] == truth[:, i] for i, name in enumerate(ATTRIBUTE_NAMES)], dim=1)
    return clip_cosines(images, prompts), right


def tiny_prompt(worse: Path, better: Path) -> tuple[str, float, float, float]:
    """(the prompt where ``worse`` beats ``better`` by the largest CLIP cosine margin at seed derive_seed(0, 0), that
    margin, the attribute accuracy of ``better`` and of ``worse`` over the held-out set)."""
    cos_w, right_w = scan(worse)
    cos_b, right_b = scan(better)
    i = int(torch.argmax(cos_w - cos_b))
    return HELDOUT[i][0], float(cos_w[i] - cos_b[i]), float(right_b.float().mean()), float(right_w.float().mean())


def protocol(prompts: list[str], samples_per_prompt: int, name: str) -> Protocol:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(prompts=tuple(prompts), num_samples=len(prompts) * samples_per_prompt, seed=0,
                        sampler=SETTINGS, backbones=dict(DEMO_BACKBONES), metrics=("clip_score",), name=name)


def full_protocol(prompts: int = 189) -> Protocol:
    return protocol([c for c, _ in HELDOUT[:prompts]], 1, f"full-{prompts}")
