"""The demo's tiny text-to-image DiT, shaped for the Hugging Face Trainer, and its sampler.

- :class:`FlowMatchingDiT`: a plain ``nn.Module`` around ``bestckpt.demo.model.TinyDiT`` whose
  ``forward(images, tokens)`` returns ``{"loss": rectified-flow loss}`` (the demo's objective, with
  caption dropout for classifier-free guidance), which is all ``Trainer`` needs. Its noise comes from the
  global RNG, which the Trainer seeds and saves in every checkpoint (``rng_state*.pth``).
- :class:`CaptionedShapes`: the demo's training combinations, rendered once.
- :func:`make_sampler` (spec ``"tiny_dit_hf:make_sampler"``, rebuilt in the background worker, which
  finds this folder on its ``sys.path``): loads ``model.safetensors`` from a ``checkpoint-N`` directory
  (or ``best.pt``) and samples with the demo's seeded noise and Euler integration. It evaluates the
  online weights (the Trainer keeps no EMA) and says so.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bestckpt.demo.data import Tokenizer, caption, combinations, render
from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.sampler import euler_sample, initial_noise, to_uint8
from bestckpt.demo.train import flow_matching_loss


def model_config() -> DiTConfig:
    """The demo's architecture (~0.75 M parameters): the training script and the sampler share it."""
    tok = Tokenizer()
    return DiTConfig(vocab_size=tok.vocab_size, max_tokens=tok.max_length, pad_id=Tokenizer.PAD, heads=4, patch_size=4)


class FlowMatchingDiT(torch.nn.Module):
    """TinyDiT with its training loss in ``forward`` (what ``Trainer.compute_loss`` calls)."""

    def __init__(self, cfg: DiTConfig, caption_dropout: float = 0.1) -> None:
        super().__init__()
        self.dit = TinyDiT(cfg)
        self.caption_dropout = caption_dropout

    def forward(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # from the Trainer-seeded global RNG
        drop = torch.rand(images.shape[0], generator=g) < self.caption_dropout  # [B]: CFG caption dropout
        return {"loss": flow_matching_loss(self.dit, images, tokens, drop.to(images.device), g)}


class CaptionedShapes(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The demo's training combinations: images [3, 32, 32] in [-1, 1] and caption tokens [L]."""

    def __init__(self) -> None:
        combos = combinations("train")
        self.images = torch.stack([render(a) for a in combos]).float() / 127.5 - 1.0
        self.tokens = Tokenizer().encode([caption(a) for a in combos])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"images": self.images[i], "tokens": self.tokens[i]}


class TrainerCheckpointSampler:
    """The evaluation sampler (bestckpt's Sampler contract) over Trainer checkpoint directories."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self.tokenizer = Tokenizer()
        self._cached: tuple[str, TinyDiT] | None = None

    def _model(self, checkpoint: Path, device: Any) -> TinyDiT:
        from bestckpt.integrations.transformers import load_state_dict

        key = f"{checkpoint.resolve()}:{device}"
        if self._cached is None or self._cached[0] != key:  # the evaluator calls once per batch of prompts
            state = load_state_dict(checkpoint)
            model = TinyDiT(model_config())
            model.load_state_dict({k.removeprefix("dit."): v for k, v in state.items()})
            self._cached = (key, model.to(device).eval())
        return self._cached[1]

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int], settings: Any,
                 device: Any = "cpu") -> Any:
        from bestckpt.evaluation.sampler import SampleBatch

        model = self._model(Path(checkpoint_path), device)
        size = model.cfg.image_size
        tokens = self.tokenizer.encode(list(prompts))
        noise = initial_noise(seeds, (model.cfg.in_channels, size, size))  # prompt i's noise: from seeds[i] only
        out = []
        for i in range(0, len(prompts), self.batch_size):
            x = euler_sample(model, tokens[i:i + self.batch_size].to(device), noise[i:i + self.batch_size].to(device),
                             num_steps=settings.num_steps, guidance_scale=settings.guidance_scale)
            out.append(to_uint8(x).cpu())
        return SampleBatch(images=torch.cat(out), weights="online")


def make_sampler() -> TrainerCheckpointSampler:
    return TrainerCheckpointSampler()
