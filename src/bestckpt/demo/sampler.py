"""The demo's `Sampler`: turns a saved demo checkpoint into images for evaluation.

`make_sampler()` is the factory named by the spec ``"bestckpt.demo.sampler:make_sampler"`` that the
background evaluation worker loads (a spec, not an object, so it crosses a process boundary).

What makes checkpoint-to-checkpoint scores comparable:
  * the initial noise of prompt i comes only from its seed (a private `torch.Generator` per prompt),
    so the same prompt gets the same noise at every evaluated checkpoint and in every batch split;
  * EMA weights are used when the checkpoint has them, and the result says which ("ema"/"online");
  * a few-step Euler integration of the rectified-flow ODE from t=1 (noise) to t=0 (data), with
    classifier-free guidance, and no clamping of intermediate states (only the final image is
    clamped to [-1, 1] and quantised with rounding to uint8).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bestckpt.demo.model import DiTConfig, TinyDiT

__all__ = ["DemoSampler", "make_sampler", "load_model", "initial_noise", "euler_sample", "to_uint8"]

logger = logging.getLogger(__name__)


def load_model(checkpoint_path: str | Path, *, prefer_ema: bool = True,
               device: torch.device | str = "cpu") -> tuple[TinyDiT, str, dict[str, Any]]:
    """Load a demo checkpoint -> (model in eval mode, "ema" | "online", checkpoint dict).

    A checkpoint is the dict written by ``train.py``: {model, ema, opt, step, epoch, args, model_config}."""
    path = Path(checkpoint_path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; the demo sampler reads single-file demo checkpoints (*.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a demo checkpoint (found {keys}); expected keys 'model', 'model_config' "
            "as written by bestckpt.demo.train"
        )
    model = TinyDiT(DiTConfig(**ckpt["model_config"]))
    which = "ema" if prefer_ema and ckpt.get("ema") is not None else "online"
    model.load_state_dict(ckpt["ema"] if which == "ema" else ckpt["model"])
    model.to(device).eval()
    return model, which, ckpt


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> Tensor:
    """Noise [N, *shape] where row i depends only on seeds[i] (batch-split invariant)."""
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        rows.append(torch.randn(shape, generator=g))
    return torch.stack(rows)


@torch.no_grad()
def euler_sample(model: TinyDiT, tokens: Tensor, noise: Tensor, *, num_steps: int = 20,
                 guidance_scale: float = 3.0) -> Tensor:
    """Integrate dx/dt = v(x, t) from t=1 (noise [N,3,H,W]) to t=0 with `num_steps` Euler steps.

    Classifier-free guidance: v = v_uncond + s * (v_cond - v_uncond), evaluated as one batch of
    2N (conditional rows first). Returns float images [N, 3, H, W], nominally in [-1, 1]."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: need at least 1 Euler step")
    n = noise.shape[0]
    x = noise.clone()
    use_cfg = guidance_scale != 1.0
    toks = torch.cat([tokens, tokens]) if use_cfg else tokens
    drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]) if use_cfg else None
    if drop is not None:
        drop = drop.to(noise.device)
    ts = torch.linspace(1.0, 0.0, num_steps + 1)
    for i in range(num_steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        xin = torch.cat([x, x]) if use_cfg else x
        v = model(xin, torch.full((xin.shape[0],), t, device=x.device), toks, drop)
        if use_cfg:
            v_c, v_u = v.chunk(2)
            v = v_u + guidance_scale * (v_c - v_u)
        x = x + (t_next - t) * v
    return x


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255], clamped then rounded (never truncated)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class DemoSampler:
    """Callable per the `bestckpt.evaluation.sampler.Sampler` protocol.

    __call__(checkpoint_path, prompts, seeds, settings, device) -> SampleBatch(images uint8
    [N, 3, H, W], weights "ema"|"online"). `settings.num_steps` and `settings.guidance_scale` are
    used; `settings.extra["batch_size"]` bounds memory (default 64)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._tokenizer: Any = None  # a demo.data.Tokenizer, built on first use (imports the data module)
        # The evaluator calls us once per batch of prompts: load each checkpoint once, keyed by
        # what identifies the file's content on disk (a re-saved step has a new inode/mtime).
        self._cached: tuple[tuple[Any, ...], TinyDiT, str, dict[str, Any]] | None = None

    def _load(self, checkpoint_path: Path, device: torch.device | str) -> tuple[TinyDiT, str, dict[str, Any]]:
        st = Path(checkpoint_path).stat()
        key = (str(Path(checkpoint_path).resolve()), st.st_ino, st.st_mtime_ns, st.st_size, str(device))
        if self._cached is None or self._cached[0] != key:
            model, which, ckpt = load_model(checkpoint_path, device=device)
            ckpt = {k: v for k, v in ckpt.items() if k not in ("opt", "model", "ema")}  # keep metadata only
            self._cached = (key, model, which, ckpt)
        return self._cached[1], self._cached[2], self._cached[3]

    def _tokenize(self, prompts: Sequence[str]) -> Tensor:
        if self._tokenizer is None:
            from bestckpt.demo.data import Tokenizer

            self._tokenizer = Tokenizer()
        return self._tokenizer.encode(list(prompts))

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int],
                 settings: Any, device: torch.device | str = "cpu") -> Any:
        from bestckpt.evaluation.sampler import SampleBatch

        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        model, which, ckpt = self._load(Path(checkpoint_path), device)
        cfg = model.cfg
        extra = dict(getattr(settings, "extra", None) or {})
        batch = int(extra.get("batch_size", self.batch_size))
        num_steps = int(getattr(settings, "num_steps", 20))
        scale = float(getattr(settings, "guidance_scale", 3.0))
        size = getattr(settings, "image_size", None)
        if size not in (None, cfg.image_size):
            raise ValueError(
                f"settings.image_size={size} but the demo model generates {cfg.image_size}x{cfg.image_size}; "
                f"set image_size={cfg.image_size} in the protocol's sampler settings"
            )
        tokens = self._tokenize(prompts)
        noise = initial_noise(seeds, (cfg.in_channels, cfg.image_size, cfg.image_size))
        out = []
        for i in range(0, len(prompts), batch):
            x = euler_sample(model, tokens[i:i + batch].to(device), noise[i:i + batch].to(device),
                             num_steps=num_steps, guidance_scale=scale)
            out.append(to_uint8(x).cpu())
        images = torch.cat(out) if out else torch.zeros(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
        logger.debug("sampled %d images from %s (step %s, %s weights)", len(images), checkpoint_path,
                     ckpt.get("step"), which)
        return SampleBatch(images=images, weights=which)


def make_sampler() -> DemoSampler:
    """Factory for the spec ``bestckpt.demo.sampler:make_sampler``."""
    return DemoSampler()
