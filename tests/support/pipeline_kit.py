"""Test helpers for the evaluation-pipeline tests: a tiny deterministic sampler and checkpoint writer.

The sampler is a real (if tiny) generative model: it loads the checkpoint written by
``save_checkpoint`` and renders each (prompt, seed) as ``sigmoid(upsampled weights + prompt tint +
seeded noise)``. Same checkpoint + same seeds -> bit-identical images on any device, because the
noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (as real samplers should).
Samplers are named as ``"pipeline_kit:make_sampler"`` so spawned workers and `bestckpt watch`
subprocesses can build them (this folder is put on PYTHONPATH).
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning
from bestckpt.evaluation.sampler import SampleBatch, SamplerSettings
from bestckpt.runners.evaluator import Evaluator

TESTS_DIR = Path(__file__).resolve().parent


def save_checkpoint(path: str | Path, step: int, *, seed: int | None = None, ema: bool = True) -> Path:
    """Write a small checkpoint atomically (temp file + rename), like a careful trainer."""
    path = Path(path)
    g = torch.Generator().manual_seed(step if seed is None else seed)
    w = torch.randn(3, 8, 8, generator=g) * (1.0 + step / 1000.0)
    state = {"module": {"w": w}, "steps": step}
    if ema:
        state["ema"] = {"w": w * 0.9}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _tint(prompt: str) -> torch.Tensor:
    h = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([h[0], h[1], h[2]], dtype=torch.float32).view(3, 1, 1) / 64.0 - 2.0


def _announce_and_hold(checkpoint_path: Path) -> None:
    """Test hooks, set through the environment (spawned workers and CLI subprocesses inherit it):

    - ``PIPELINE_KIT_BEACON``: a :class:`waiting.Beacon` path; each sampler call sends
      ``"<pid> <checkpoint name>"`` there when it starts (the test learns that sampling began);
    - ``PIPELINE_KIT_GATE`` + ``PIPELINE_KIT_HOLD``: a sampler call on the checkpoint named ``HOLD``
      (``*``: any) waits until the test opens the :class:`waiting.Gate` (bounded).
    """
    from waiting import beacon_send, gate_wait

    beacon = os.environ.get("PIPELINE_KIT_BEACON")
    if beacon:
        beacon_send(beacon, f"{os.getpid()} {checkpoint_path.name}")
    gate, hold = os.environ.get("PIPELINE_KIT_GATE"), os.environ.get("PIPELINE_KIT_HOLD", "*")
    if gate and hold in ("*", checkpoint_path.name):
        gate_wait(gate)


class TinySampler:
    """Deterministic sampler over checkpoints written by :func:`save_checkpoint`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int],
                 settings: SamplerSettings, device: torch.device) -> SampleBatch:
        self.calls += 1
        _announce_and_hold(Path(checkpoint_path))
        if self.delay:
            time.sleep(self.delay)
        state = torch.load(Path(checkpoint_path), map_location="cpu", weights_only=True)
        weights = "ema" if "ema" in state else "online"
        w = state["ema"]["w"] if weights == "ema" else state["module"]["w"]
        size = settings.image_size
        base = torch.nn.functional.interpolate(w[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        images = []
        for prompt, seed in zip(prompts, seeds):
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(3, size, size, generator=g)
            x = torch.sigmoid(base + _tint(prompt) + 0.5 * noise).to(device)
            images.append(x.mul(255).round().clamp(0, 255).to(torch.uint8))
        return SampleBatch(images=torch.stack(images).cpu(), weights=weights)


def make_sampler() -> TinySampler:
    return TinySampler()


class _Broken(TinySampler):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, checkpoint_path, prompts, seeds, settings, device):  # type: ignore[override]
        if self.mode == "raise":
            raise RuntimeError("sampler exploded on purpose")
        batch = super().__call__(checkpoint_path, prompts, seeds, settings, device)
        if self.mode == "float":
            return SampleBatch(images=batch.images.float() / 255.0, weights=batch.weights)
        if self.mode == "shape":
            return SampleBatch(images=batch.images[:, :1], weights=batch.weights)
        if self.mode == "count":
            return SampleBatch(images=batch.images[:-1], weights=batch.weights)
        if self.mode == "size":
            return SampleBatch(images=batch.images[:, :, :-2, :-2], weights=batch.weights)
        raise AssertionError(self.mode)


def make_raising_sampler() -> _Broken:
    return _Broken("raise")


def make_float_sampler() -> _Broken:
    return _Broken("float")


def make_shape_sampler() -> _Broken:
    return _Broken("shape")


def write_reference_images(folder: str | Path, n: int, size: int = 40, seed: int = 7) -> list[Path]:
    """n real PNG images of varying size (so resizing is exercised)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        s = size + (i % 3) * 4
        arr = torch.randint(0, 256, (s, s + 2, 3), generator=g, dtype=torch.uint8).numpy()
        p = folder / f"ref_{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


class KitScorer:
    """A small but real scorer implementing the Scorer contract on the library's metric functions.

    Features: ``pool`` = 2x2 average-pooled colours (12-d, float64) and ``logits`` = a fixed seeded
    linear map of them (10 classes); ``lpips`` = mean absolute pixel difference to the paired reference
    (a stand-in distance; the real LPIPS network is the metrics engineer's). Used where the test is
    about the pipeline (sharding, gathering, recording), not about the backbones.
    """

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.proj = torch.randn(12, 10, generator=g, dtype=torch.float64) * 4.0

    def _pool(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float64) / 255.0
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    def features(self, images: torch.Tensor, prompts, references=None) -> dict[str, torch.Tensor]:
        pool = self._pool(images)
        out = {"pool": pool, "logits": pool @ self.proj}
        if references is not None:
            out["lpips"] = (images.double() - references.double()).abs().mean(dim=(1, 2, 3)) / 255.0
        return out

    def reference_statistics(self, images: torch.Tensor, cache_dir=None) -> dict[str, torch.Tensor]:
        return {"pool": self._pool(images)}

    def score(self, features, reference, seed: int = 0) -> dict[str, float]:
        from bestckpt.metrics.fid import fid_from_features
        from bestckpt.metrics.inception_score import inception_score_from_logits
        from bestckpt.metrics.kid import kid_from_features

        n = features["pool"].shape[0]
        scores: dict[str, float] = {}
        scores["inception_score"] = inception_score_from_logits(features["logits"], splits=min(2, n), seed=seed)[0]
        if "lpips" in features:
            scores["lpips"] = float(features["lpips"].mean())
        if reference is not None:
            scores["fid"] = fid_from_features(features["pool"], reference["pool"])
            size = min(n, reference["pool"].shape[0])
            scores["kid"] = kid_from_features(features["pool"], reference["pool"], subsets=5, subset_size=size,
                                              seed=seed)[0]
        scores["composite_score"] = scores["inception_score"] - scores.get("lpips", 0.0)
        return scores


def make_kit_scorer() -> KitScorer:
    return KitScorer()


class DeepSpeedTinySampler(TinySampler):
    """TinySampler over DeepSpeed tag directories written by tests/deepspeed_worker.py.

    Loads ``mp_rank_00_model_states.pt`` through ``bestckpt.integrations.deepspeed.load_model_states``
    (EMA when present) and renders from the last layer's first column.
    """

    def __call__(self, checkpoint_path, prompts, seeds, settings, device):  # type: ignore[override]
        from bestckpt.integrations.deepspeed import load_model_states

        state, weights = load_model_states(checkpoint_path)
        w = state["2.weight"][:, :1].reshape(3, 8, 8).float()
        size = settings.image_size
        base = torch.nn.functional.interpolate(w[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        images = []
        for prompt, seed in zip(prompts, seeds):
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(3, size, size, generator=g)
            images.append(torch.sigmoid(base + _tint(prompt) + 0.5 * noise).mul(255).round().to(torch.uint8))
        return SampleBatch(images=torch.stack(images), weights=weights)


def make_deepspeed_sampler() -> DeepSpeedTinySampler:
    return DeepSpeedTinySampler()


def make_protocol(tmp_path: Path, num_samples: int = 8) -> Protocol:
    refs = write_reference_images(tmp_path / "refs", 4)
    write_reference_images(tmp_path / "refset", 8, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(prompts=["a red square", "a blue circle", "a green star", "two dots"],
                        reference_images=refs, reference_dir=tmp_path / "refset", num_samples=num_samples, seed=5,
                        sampler=SamplerSettings(num_steps=4, guidance_scale=1.0, image_size=16),
                        metrics=("inception_score", "lpips", "fid", "kid", "composite_score"))


RANDOM_BACKBONES = {"inception": "inception-2015-12-05-random-test", "clip": "clip-tiny-random-test",
                    "lpips": "lpips-alex-random-test"}


def real_protocol(tmp_path: Path, num_samples: int = 4) -> Protocol:
    """All six metrics through the real Scorer and random-initialised backbones of the real architectures."""
    refs = write_reference_images(tmp_path / "refs_real", 3, size=24)
    write_reference_images(tmp_path / "refset_real", 4, size=24, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(prompts=["a red square", "a blue circle", "a green star"], reference_images=refs,
                        reference_dir=tmp_path / "refset_real", num_samples=num_samples, seed=1,
                        sampler=SamplerSettings(num_steps=2, image_size=32), backbones=RANDOM_BACKBONES,
                        metrics=("clip_score", "lpips", "inception_score", "fid", "kid", "composite_score"),
                        composite_weights={"clip_score": 0.4, "inception_score": 0.3, "lpips": 0.2, "fid": 0.1},
                        metric_options={"inception_score": {"splits": 2}, "kid": {"subsets": 10, "subset_size": 4}})


class InterruptedEvaluator(Evaluator):
    """An :class:`Evaluator` interrupted (Ctrl-C) when it starts its ``stop_at``-th evaluation; counts the calls."""

    def __init__(self, *args: Any, stop_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at, self.calls = stop_at, 0

    def evaluate(self, step: int, path: str | Path) -> Any:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().evaluate(step, path)
