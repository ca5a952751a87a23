"""The example's model and sampler: bestckpt's demo DiT as a real diffusers model.

``TinyDiTModel`` is a ``diffusers.ModelMixin`` + ``ConfigMixin`` around the demo's ``TinyDiT``, so
the training script uses diffusers' own machinery unchanged: ``save_pretrained`` into
``checkpoint-{step}/unet``, ``EMAModel`` (``diffusers.training_utils``) saved into ``unet_ema``,
``from_pretrained`` when resuming. ``make_sampler`` (spec ``"tiny_dit:make_sampler"``, imported by
bestckpt's background worker, which inherits the script's ``sys.path``) is what a user writes for
their own model: load the checkpoint folder's EMA weights (else the online ones) with
:func:`bestckpt.integrations.accelerate.load_unet`, then sample each prompt from its own seed (the
demo's Euler sampler), so scores are comparable from checkpoint to checkpoint.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.sampler import euler_sample, initial_noise, to_uint8
from bestckpt.evaluation.sampler import SampleBatch
from bestckpt.integrations.accelerate import load_unet


class TinyDiTModel(ModelMixin, ConfigMixin):
    """The demo DiT (``bestckpt.demo.model.TinyDiT``) with a diffusers config; same forward."""

    @register_to_config
    def __init__(self, vocab_size: int = 2, max_tokens: int = 1, pad_id: int = 0, hidden: int = 96,
                 depth: int = 3, heads: int = 4, patch_size: int = 4) -> None:
        super().__init__()
        self.dit = TinyDiT(DiTConfig(vocab_size=vocab_size, max_tokens=max_tokens, pad_id=pad_id, hidden=hidden,
                                     depth=depth, heads=heads, patch_size=patch_size))

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor, drop: Tensor | None = None) -> Tensor:
        return self.dit(x, t, tokens, drop)


class CheckpointSampler:
    """bestckpt sampler contract: ``(checkpoint folder, prompts, seeds, settings, device) -> SampleBatch``."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._cached: tuple[str, TinyDiTModel, str] | None = None

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int], settings: Any,
                 device: Any = "cpu") -> SampleBatch:
        if self._tokenizer is None:
            from bestckpt.demo.data import Tokenizer

            self._tokenizer = Tokenizer()
        key = str(Path(checkpoint_path).resolve())
        if self._cached is None or self._cached[0] != key:  # called once per batch of prompts: load once
            model, which = load_unet(checkpoint_path, TinyDiTModel)
            self._cached = (key, model.to(device).eval(), which)
        model, which = self._cached[1], self._cached[2]
        cfg = model.dit.cfg
        tokens = self._tokenizer.encode(list(prompts)).to(device)
        noise = initial_noise(seeds, (cfg.in_channels, cfg.image_size, cfg.image_size)).to(device)
        with torch.no_grad():
            x = euler_sample(model.dit, tokens, noise, num_steps=int(getattr(settings, "num_steps", 12)),
                             guidance_scale=float(getattr(settings, "guidance_scale", 3.0)))
        return SampleBatch(images=to_uint8(x).cpu(), weights=which)


def make_sampler() -> CheckpointSampler:
    """Factory for the spec ``"tiny_dit:make_sampler"``."""
    return CheckpointSampler()
