"""The demo sampler for Lightning checkpoints of ``train.py``'s module (``.ckpt`` files or DeepSpeed directories).

Named by the spec ``"lightning_sampler:make_sampler"``: the background worker process imports it from this
folder (``train.py``'s folder is on ``sys.path``, which the spawned worker inherits). Sampling is the demo's
(per-prompt seeded noise, EMA weights, Euler steps); only loading differs: Lightning keeps the weights under
``state_dict`` with the module's attribute names as prefixes (``ema.``, ``model.``) and the model's settings in
``hyper_parameters``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.sampler import DemoSampler
from bestckpt.integrations.lightning import load_lightning_state_dict


def load_lightning_model(path: Path, device: Any = "cpu") -> tuple[TinyDiT, str, dict[str, Any]]:
    """(TinyDiT in eval mode, "ema" | "online", metadata) from a checkpoint written by ``train.py``."""
    state, ckpt = load_lightning_state_dict(path)
    cfg = DiTConfig(**ckpt["hyper_parameters"]["model_config"])
    which = "ema" if any(k.startswith("ema.") for k in state) else "online"
    prefix = "ema." if which == "ema" else "model."
    model = TinyDiT(cfg)
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return model.to(device).eval(), which, {"step": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}


class LightningDemoSampler(DemoSampler):
    """:class:`~bestckpt.demo.sampler.DemoSampler` reading Lightning checkpoints (one load per checkpoint)."""

    def _load(self, checkpoint_path: Path, device: torch.device | str) -> tuple[TinyDiT, str, dict[str, Any]]:
        st = Path(checkpoint_path).stat()
        key = (str(Path(checkpoint_path).resolve()), st.st_ino, st.st_mtime_ns, st.st_size, str(device))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, *load_lightning_model(Path(checkpoint_path), device))
        return self._cached[1], self._cached[2], self._cached[3]


def make_sampler() -> LightningDemoSampler:
    return LightningDemoSampler()
