"""The demo sampler for DeepSpeed tag directories written by the HunyuanDiT-shaped example.

``examples/hunyuandit/train_deepspeed.py`` trains the demo's TinyDiT under DeepSpeed and saves
HunyuanDiT's client state (``steps``, ``epoch``, ``args``, ``ema``): this sampler rebuilds the model
from ``args`` (``--hidden``, ``--depth``), loads the tag's EMA weights when present, else the module
weights (consolidated from the shards for ZeRO-3), through
:func:`bestckpt.integrations.hunyuandit.load_tag_weights`, and samples exactly like
:class:`~bestckpt.demo.sampler.DemoSampler` (each image's noise from its seed). Spec:
``"bestckpt.demo.tag_sampler:make_sampler"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.sampler import DemoSampler

__all__ = ["TagSampler", "config_from_args", "load_tag_model", "make_sampler"]


def config_from_args(args: Any) -> DiTConfig:
    """The TinyDiT configuration the example builds from its ``--hidden`` and ``--depth``."""
    from bestckpt.demo.data import Tokenizer

    tokenizer = Tokenizer()
    return DiTConfig(vocab_size=tokenizer.vocab_size, max_tokens=tokenizer.max_length, pad_id=Tokenizer.PAD,
                     hidden=int(args.hidden), depth=int(args.depth), heads=4, patch_size=4)


def load_tag_model(tag_dir: str | Path, *, prefer_ema: bool = True,
                   device: torch.device | str = "cpu") -> tuple[TinyDiT, str, dict[str, Any]]:
    """``(model in eval mode, "ema" | "online", metadata {steps, epoch})`` from a tag directory."""
    from bestckpt.integrations.hunyuandit import load_tag_weights, read_client_state

    client = read_client_state(tag_dir)
    if client.get("args") is None:
        raise ValueError(f"{tag_dir} has no 'args' in its client state; it was not written by the HunyuanDiT example")
    model = TinyDiT(config_from_args(client["args"]))
    state, which = load_tag_weights(tag_dir, prefer_ema=prefer_ema)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, which, {"step": client.get("steps"), "epoch": client.get("epoch")}


class TagSampler(DemoSampler):
    """:class:`~bestckpt.demo.sampler.DemoSampler` reading DeepSpeed tag directories instead of files."""

    def _load(self, checkpoint_path: Path, device: torch.device | str) -> tuple[TinyDiT, str, dict[str, Any]]:
        from bestckpt.integrations.hunyuandit import model_states_file

        st = model_states_file(checkpoint_path).stat()
        key = (str(Path(checkpoint_path).resolve()), st.st_ino, st.st_mtime_ns, st.st_size, str(device))
        if self._cached is None or self._cached[0] != key:
            model, which, meta = load_tag_model(checkpoint_path, device=device)
            self._cached = (key, model, which, meta)
        return self._cached[1], self._cached[2], self._cached[3]


def make_sampler() -> TagSampler:
    """Factory for the spec ``bestckpt.demo.tag_sampler:make_sampler``."""
    return TagSampler()
