"""Train the demo's tiny text-to-image DiT with PyTorch Lightning; bestckpt keeps the best checkpoints.

Lightning's ``ModelCheckpoint`` saves every ``--ckpt-every`` steps and keeps every file (``save_top_k=-1``);
bestckpt's callback scores every ``--eval-every-n-checkpoints``-th checkpoint in a background process with the
demo's protocol and evaluators, keeps the top ``--save-top-k``, every ``--keep-every-n-steps`` and the latest,
points ``best.pt`` at the best and deletes the rest. The lines marked ``# bestckpt`` are all it takes.

    python examples/lightning/train.py --output-dir runs/lightning --steps 40 --ckpt-every 5
    python examples/lightning/train.py --output-dir runs/lightning --steps 60 --ckpt-every 5 --resume last
    python examples/lightning/train.py ... --devices 2 --strategy ddp   # 2 CPU processes (gloo)

Options: ``--steps`` (Trainer ``max_steps``), ``--ckpt-every`` (``every_n_train_steps``), ``--output-dir``
(checkpoints in ``OUTPUT/checkpoints``, bestckpt's TensorBoard tags in ``OUTPUT/tensorboard_logs``, the
worker's log in ``OUTPUT/logs``), ``--timings-out PATH`` (per checkpoint, the seconds training spent in
bestckpt: ``{"stack": "lightning", "blocked_s": [...]}``), ``--resume PATH|last`` (``fit(ckpt_path=...)``),
``--async-io`` (``AsyncCheckpointIO``), ``--save-last {none,true,link}``.
"""
from __future__ import annotations

import argparse
import json
import logging
from argparse import Namespace
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from torch.utils.data import DataLoader, TensorDataset

from bestckpt.demo.data import Tokenizer, caption, combinations, render
from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.train import build_protocol, flow_matching_loss, update_ema
from bestckpt.integrations.lightning import BestCheckpointCallback  # bestckpt
from bestckpt.runners import EvalSchedule  # bestckpt


class DemoDiT(L.LightningModule):
    """The demo's TinyDiT, its EMA copy (what the sampler evaluates), rectified-flow loss, AdamW with warm-up."""

    def __init__(self, model_config: dict[str, Any], lr: float = 1e-3, warmup: int = 50, ema_decay: float = 0.995,
                 caption_dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()  # the sampler rebuilds the model from hyper_parameters["model_config"]
        self.model = TinyDiT(DiTConfig(**model_config))
        self.ema = deepcopy(self.model).requires_grad_(False)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0, tokens = batch
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step * 97 + self.global_rank)
        drop = torch.rand(x0.shape[0], generator=g) < self.hparams.caption_dropout
        loss = flow_matching_loss(self.model, x0, tokens, drop, g)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        update_ema(self.ema, self.model, min(self.hparams.ema_decay, (1 + step) / (10 + step)))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, betas=(0.9, 0.99), weight_decay=0.0)
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / self.hparams.warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}


def train_data(tokenizer: Tokenizer) -> TensorDataset:
    """Every training combination rendered once: images [M, 3, 32, 32] in [-1, 1], tokens [M, L]."""
    combos = combinations("train")
    images = torch.stack([render(a) for a in combos]).float() / 127.5 - 1.0
    return TensorDataset(images, tokenizer.encode([caption(a) for a in combos]))


def parse_args(argv: list[str] | None = None) -> Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, default=Path("runs/lightning"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--timings-out", type=Path, default=None)
    p.add_argument("--resume", default=None, help="fit(ckpt_path=...): a checkpoint path or 'last'")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto", help="auto, ddp (gloo on CPU), deepspeed (needs a GPU)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--async-io", action="store_true", help="write checkpoints with AsyncCheckpointIO")
    p.add_argument("--save-last", choices=("none", "true", "link"), default="none")
    p.add_argument("--mode", choices=("background", "inline", "off"), default="background")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save-top-k", type=int, default=3)
    p.add_argument("--keep-every-n-steps", type=int, default=0)
    p.add_argument("--eval-every-n-checkpoints", type=int, default=2)
    p.add_argument("--num-eval-prompts", type=int, default=24)
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(args: Namespace) -> None:
    torch.set_num_threads(1)
    L.seed_everything(args.seed, verbose=False)
    out: Path = args.output_dir
    (out / "logs").mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer()
    cfg = DiTConfig(vocab_size=tokenizer.vocab_size, max_tokens=tokenizer.max_length, pad_id=Tokenizer.PAD,
                    hidden=args.hidden, depth=args.depth, heads=4, patch_size=4)
    module = DemoDiT(cfg.to_dict(), seed=args.seed)
    loader = DataLoader(train_data(tokenizer), batch_size=args.batch_size, shuffle=True, drop_last=True)

    checkpointing = ModelCheckpoint(
        dirpath=out / "checkpoints", every_n_train_steps=args.ckpt_every,
        filename="{step:07d}", save_top_k=-1,  # bestckpt: names it parses; Lightning deletes nothing
        save_last={"none": None, "true": True, "link": "link"}[args.save_last])
    best = BestCheckpointCallback(  # bestckpt
        build_protocol(args, out / "protocol"), "lightning_sampler:make_sampler", mode=args.mode,  # bestckpt
        schedule=EvalSchedule(args.eval_every_n_checkpoints, checkpoint_every_steps=args.ckpt_every),  # bestckpt
        save_top_k=args.save_top_k, keep_every_n_steps=args.keep_every_n_steps,  # bestckpt
        tensorboard_dir=out / "tensorboard_logs", log_file=out / "logs" / "evaluation_worker.log")  # bestckpt
    # a batch without dropped captions leaves the null-caption embedding unused: DDP must be told
    strategy = "ddp_find_unused_parameters_true" if args.strategy == "ddp" else args.strategy
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=strategy, max_steps=args.steps,
        callbacks=[checkpointing, best], plugins=[AsyncCheckpointIO()] if args.async_io else None,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
    trainer.fit(module, loader, ckpt_path=args.resume)
    # after fit, Lightning's "best" (trainer.test(ckpt_path="best")) is bestckpt's best on every rank
    logging.info("rank %d: ckpt_path='best' -> %s", trainer.global_rank, checkpointing.best_model_path)

    if args.timings_out is not None and trainer.is_global_zero:
        args.timings_out.write_text(json.dumps({"stack": "lightning", "blocked_s": best.blocked_s}))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # leave together, then tear the group down (torch warns when it is left up)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parse_args())
