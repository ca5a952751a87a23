"""A tiny model for the real ``transformers.Trainer`` and a sampler over its checkpoint directories.

``TinyImageModel`` is a plain ``torch.nn.Module`` (``forward(x, y) -> {"loss": ...}``) whose only
parameter ``w`` [3, 8, 8] is also what :class:`HFTinySampler` renders, as ``pipeline_kit``'s
TinySampler does: ``sigmoid(upsampled w + prompt tint + seeded noise)``. The sampler reads the weights
through ``bestckpt.integrations.transformers.load_state_dict`` (``model.safetensors`` in
``checkpoint-N``), so it is named ``"hf_kit:make_sampler"`` for the spawned evaluation worker.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bestckpt.evaluation.sampler import SampleBatch, SamplerSettings


class TinyImageModel(torch.nn.Module):
    """Regresses y from x through the mean of ``w``: a few Trainer steps move ``w`` visibly."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = x * self.w.mean() + (self.w ** 2).mean()
        return {"loss": ((pred - y) ** 2).mean()}


class PairData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """n fixed (x, y) pairs, y = 3x - 1."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 1, generator=g)
        self.y = 3 * self.x - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _tint(prompt: str) -> torch.Tensor:
    import hashlib

    h = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([h[0], h[1], h[2]], dtype=torch.float32).view(3, 1, 1) / 64.0 - 2.0


class HFTinySampler:
    """Deterministic sampler over ``checkpoint-N`` directories of :class:`TinyImageModel`."""

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int],
                 settings: SamplerSettings, device: Any) -> SampleBatch:
        from bestckpt.integrations.transformers import load_state_dict

        w = load_state_dict(checkpoint_path)["w"].float()
        size = settings.image_size
        base = torch.nn.functional.interpolate(w[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        images = []
        for prompt, seed in zip(prompts, seeds):
            noise = torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(seed)))
            images.append(torch.sigmoid(base + _tint(prompt) + 0.5 * noise).mul(255).round().to(torch.uint8))
        return SampleBatch(images=torch.stack(images), weights="online")


def make_sampler() -> HFTinySampler:
    return HFTinySampler()
