"""A tiny real LightningModule and a sampler over its checkpoints, for tests of the Lightning callback.

``TinyLit`` learns a 3x8x8 weight ``w`` (a real optimiser step on a real loss); ``make_sampler`` renders
images from a checkpoint's ``state_dict["w"]`` like :class:`pipeline_kit.TinySampler`, so different
checkpoints score differently under ``pipeline_kit:make_kit_scorer``.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from pipeline_kit import _tint
from torch.utils.data import DataLoader, TensorDataset

from bestckpt.evaluation.sampler import SampleBatch
from bestckpt.integrations.lightning import load_lightning_state_dict


class TinyLit(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (target,) = batch
        return (self.w[None] - target).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (target,) = batch
        self.log("val_loss", (self.w[None] - target).pow(2).mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=g) + 2.0), batch_size=1)


class LitSampler:
    def __call__(self, checkpoint_path: Path, prompts: Any, seeds: Any, settings: Any, device: Any) -> SampleBatch:
        state, _ = load_lightning_state_dict(checkpoint_path)
        size = settings.image_size
        base = torch.nn.functional.interpolate(state["w"][None].float(), size=(size, size), mode="bilinear",
                                               align_corners=False)[0]
        images = []
        for prompt, seed in zip(prompts, seeds):
            noise = torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(seed)))
            images.append(torch.sigmoid(base + _tint(prompt) + 0.5 * noise).mul(255).round().to(torch.uint8))
        return SampleBatch(images=torch.stack(images), weights="online")


def make_sampler() -> LitSampler:
    return LitSampler()


class GatedIO(TorchCheckpointIO):
    """Synchronous IO whose write of the file named ``hold`` waits for ``gate`` (run by AsyncCheckpointIO's thread)."""

    def __init__(self, hold: str) -> None:
        super().__init__()
        self.hold = hold
        self.gate = threading.Event()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if Path(path).name == self.hold and not self.gate.wait(timeout=300):
            raise TimeoutError(f"the test never opened the gate for {path}")
        super().save_checkpoint(checkpoint, path, storage_options)


class DirectoryIO(TorchCheckpointIO):
    """Writes each checkpoint as a directory in the layout of Lightning's DeepSpeed strategy
    (``<name>.ckpt/checkpoint/mp_rank_00_model_states.pt``: ``module`` weights under ``_forward_module.``,
    the rest of the checkpoint at the top level). The strategy itself needs a GPU; this runs the
    callback's directory path with the real Trainer on CPU."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        folder = Path(path) / "checkpoint"
        folder.mkdir(parents=True)
        state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        state["module"] = {f"_forward_module.{k}": v for k, v in checkpoint["state_dict"].items()}
        torch.save(state, folder / "mp_rank_00_model_states.pt")

    def remove_checkpoint(self, path: Any) -> None:
        raise AssertionError(f"Lightning tried to delete {path}")
