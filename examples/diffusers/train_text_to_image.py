"""A diffusers-style text-to-image training script with bestckpt (lines marked ``# bestckpt``).

Shaped like diffusers' ``examples/text_to_image/train_text_to_image.py``: accelerate, the same flags
(``--output_dir``, ``--max_train_steps``, ``--checkpointing_steps``, ``--checkpoints_total_limit``,
``--resume_from_checkpoint latest``, ``--use_ema``, ``--train_batch_size``, ``--learning_rate``,
``--logging_dir``, ``--seed``), the same save/load hooks (``unet`` and ``unet_ema`` folders in each
``checkpoint-{step}``), diffusers' resume logic and the same final save of the trained model
(``output_dir/unet``). ``accelerator.save_state`` runs on every process (as diffusers' SDXL script
does under DeepSpeed) or, with ``--save_on_main_only``, inside the main-process block as in
``train_text_to_image.py``; bestckpt's call comes after it, on every process, in both forms.
The model is bestckpt's demo DiT as a real diffusers ``ModelMixin`` (``tiny_dit.py``) on the
demo's captioned shapes, so the demo evaluators can score it. Bench aliases (BENCH.md):
``--steps`` = ``--max_train_steps``, ``--ckpt-every`` = ``--checkpointing_steps``,
``--output-dir`` = ``--output_dir``, plus ``--timings-out``.

Two CPU processes (gloo)::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no examples/diffusers/train_text_to_image.py \\
        --output_dir runs/sd-shapes --max_train_steps 40 --checkpointing_steps 5 --use_ema
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from argparse import Namespace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from tiny_dit import TinyDiTModel

from bestckpt.demo.data import Tokenizer, caption, combinations, render
from bestckpt.demo.train import build_protocol, flow_matching_loss
from bestckpt.integrations.accelerate import AccelerateCheckpoints  # bestckpt

logger = get_logger(__name__, log_level="INFO")


def parse_args(argv: list[str] | None = None) -> Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", "--output-dir", default="sd-model-finetuned")
    p.add_argument("--logging_dir", default="logs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_batch_size", type=int, default=16, help="per process")
    p.add_argument("--max_train_steps", "--steps", type=int, default=40)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--checkpointing_steps", "--ckpt-every", type=int, default=5)
    p.add_argument("--checkpoints_total_limit", type=int, default=None,
                   help="diffusers' own limit: refused with bestckpt (it deletes behind the tracker)")
    p.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint-N folder name, or "latest"')
    p.add_argument("--use_ema", action="store_true")
    p.add_argument("--ema_decay", type=float, default=0.9)
    p.add_argument("--caption_dropout", type=float, default=0.1)
    # bestckpt's settings
    p.add_argument("--save_on_main_only", action="store_true",
                   help="save_state on the main process only, as train_text_to_image.py does (default: on every "
                        "process, as under DeepSpeed, so each writes its random_states_{i}.pkl)")
    p.add_argument("--save_top_k", type=int, default=2)
    p.add_argument("--eval_every_n_checkpoints", type=int, default=1)
    p.add_argument("--keep_every_n_steps", type=int, default=None)
    p.add_argument("--num_eval_prompts", type=int, default=189)
    p.add_argument("--eval_sample_steps", type=int, default=12)
    p.add_argument("--timings-out", dest="timings_out", default=None, help="BENCH.md: blocked seconds per checkpoint")
    return p.parse_args(argv)


def make_dataset(tokenizer: Tokenizer) -> torch.utils.data.TensorDataset:
    """The demo's training shapes, pre-rendered (images in [-1, 1], caption tokens)."""
    combos = combinations("train")
    images = torch.stack([render(a) for a in combos]).float() / 127.5 - 1.0
    return torch.utils.data.TensorDataset(images, tokenizer.encode([caption(a) for a in combos]))


def main(args: Namespace) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(1)
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator_project_config = ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir)
    # the DiT's learned null caption is used only by batches with a dropped caption: let DDP skip its gradient
    accelerator = Accelerator(log_with="tensorboard", project_config=accelerator_project_config,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    def protocol():  # the demo's held-out prompts and reference renders (built on the main process only)
        settings = Namespace(num_eval_prompts=args.num_eval_prompts, seed=args.seed, samples_per_prompt=1,
                             sample_steps=args.eval_sample_steps, guidance=3.0)
        return build_protocol(settings, Path(args.output_dir, "bestckpt", "protocol"))

    best = AccelerateCheckpoints(  # bestckpt: on every process; refuses --checkpoints_total_limit
        accelerator, args.output_dir, protocol, "tiny_dit:make_sampler",
        checkpoints_total_limit=args.checkpoints_total_limit, save_top_k=args.save_top_k,
        keep_every_n_steps=args.keep_every_n_steps, evaluate_every_n_checkpoints=args.eval_every_n_checkpoints)

    tokenizer = Tokenizer()
    unet = TinyDiTModel(vocab_size=tokenizer.vocab_size, max_tokens=tokenizer.max_length, pad_id=Tokenizer.PAD)
    if args.use_ema:
        ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=TinyDiTModel, model_config=unet.config)

    def save_model_hook(models, weights, output_dir):  # diffusers' hooks: unet/ and unet_ema/ folders
        if accelerator.is_main_process:
            if args.use_ema:
                ema_unet.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for model in models:
                model.save_pretrained(os.path.join(output_dir, "unet"))
                if weights:  # empty under DeepSpeed (it saves the engine itself), as diffusers' SDXL script checks
                    weights.pop()

    def load_model_hook(models, input_dir):
        if args.use_ema:
            load_model = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), TinyDiTModel)
            ema_unet.load_state_dict(load_model.state_dict())
            del load_model
        for _ in range(len(models)):
            model = models.pop()
            load_model = TinyDiTModel.from_pretrained(input_dir, subfolder="unet")
            model.register_to_config(**load_model.config)
            model.load_state_dict(load_model.state_dict())
            del load_model

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    train_dataloader = torch.utils.data.DataLoader(make_dataset(tokenizer), batch_size=args.train_batch_size,
                                                   shuffle=True, drop_last=True)
    unet, optimizer, train_dataloader = accelerator.prepare(unet, optimizer, train_dataloader)
    num_update_steps_per_epoch = len(train_dataloader)
    num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers("text2image-fine-tune")

    global_step = 0
    first_epoch = 0
    if args.resume_from_checkpoint:  # diffusers' own resume logic, unchanged
        if args.resume_from_checkpoint != "latest":
            path = os.path.basename(args.resume_from_checkpoint)
        else:
            dirs = os.listdir(args.output_dir)
            dirs = [d for d in dirs if d.startswith("checkpoint")]
            dirs = sorted(dirs, key=lambda x: int(x.split("-")[1]))
            path = dirs[-1] if len(dirs) > 0 else None
        if path is None:
            accelerator.print(f"Checkpoint '{args.resume_from_checkpoint}' does not exist. Starting a new training run.")
        else:
            accelerator.print(f"Resuming from checkpoint {path}")
            accelerator.load_state(os.path.join(args.output_dir, path))
            global_step = int(path.split("-")[1])
            first_epoch = global_step // num_update_steps_per_epoch

    generator = torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index)
    for epoch in range(first_epoch, num_train_epochs):
        unet.train()
        for images, tokens in train_dataloader:
            drop = torch.rand(images.shape[0], generator=generator) < args.caption_dropout
            loss = flow_matching_loss(unet, images, tokens, drop, generator)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if args.use_ema:
                ema_unet.step(unet.parameters())
            global_step += 1
            avg_loss = accelerator.gather(loss.detach().repeat(args.train_batch_size)).mean()  # as diffusers does
            accelerator.log({"train_loss": avg_loss.item()}, step=global_step)

            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process or not args.save_on_main_only:
                    save_path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
                    accelerator.save_state(save_path)
                    logger.info(f"Saved state to {save_path}")
                best.checkpoint_saved(global_step, epoch=epoch)  # bestckpt: every process, after the block
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    # Save the trained model (diffusers saves the pipeline here), then finish bestckpt's evaluations.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        if args.use_ema:
            ema_unet.copy_to(unet.parameters())
        unet.save_pretrained(os.path.join(args.output_dir, "unet"))
    best.close()  # bestckpt: finishes queued evaluations, logs the summary, writes the results JSON
    if args.timings_out and accelerator.is_main_process:
        Path(args.timings_out).write_text(json.dumps({"stack": "diffusers", "blocked_s": best.blocked_s}))
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
