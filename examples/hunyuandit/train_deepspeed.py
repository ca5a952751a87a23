"""HunyuanDiT's ``hydit/train_deepspeed.py``, shaped the same, training bestckpt's tiny DiT under real DeepSpeed.

Kept from HunyuanDiT (Tencent/HunyuanDiT, ``hydit/train_deepspeed.py`` and ``hydit/utils/tools.py``):
``save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by)`` with its tags
(``{train_steps:07d}.pt`` every ``--ckpt-every``, ``latest.pt`` every ``--ckpt-latest-every``, ``e{epoch:04d}.pt``
every ``--ckpt-every-n-epoch`` epochs, ``final.pt``), its client state (``steps``, ``epoch``, ``args``, ``ema``),
the barrier and rank-0 deletion of ``zero_*_optim_states.pt`` (unless ``--save-optimizer-state``), the
per-launch experiment directory ``{results_dir}/{NNN}-{task_flag}/checkpoints`` (``create_exp_folder``) and the
weights-only resume (``--resume --resume-module-root .../mp_rank_00_model_states.pt``: steps and epoch from the
client state). Replaced: the model (the demo's TinyDiT, ``bestckpt.demo.model``), the data (the demo's synthetic
captioned shapes; an "epoch" is ``--epoch-steps`` steps), the diffusion loss (the demo's rectified flow), GPUs
(``DS_ACCELERATOR=cpu``, gloo). The bestckpt lines are marked ``# bestckpt``: they are the ones
``docs/integrations/hunyuandit.md`` shows.

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 examples/hunyuandit/train_deepspeed.py \\
        --results-dir runs/hydit --max-training-steps 40 --ckpt-every 10 --zero-stage 2 --use-ema

``--steps`` is ``--max-training-steps``; ``--output-dir`` is ``--results-dir``; ``--timings-out PATH`` (rank 0)
writes the seconds training spent in bestckpt per registered checkpoint (``bench/bench_integrations.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import nullcontext
from copy import deepcopy
from glob import glob
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from bestckpt.demo.data import Tokenizer
from bestckpt.demo.model import TinyDiT
from bestckpt.demo.tag_sampler import config_from_args
from bestckpt.demo.train import _TrainData, build_protocol, flow_matching_loss
from bestckpt.integrations import hunyuandit as bestckpt_hydit  # bestckpt


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", "--output-dir", default="results")
    p.add_argument("--task-flag", default="tinydit")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--epoch-steps", type=int, default=10, help="steps per epoch (HunyuanDiT: len(loader))")
    p.add_argument("--max-training-steps", "--steps", type=int, default=40)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--ckpt-latest-every", type=int, default=15)
    p.add_argument("--ckpt-every-n-epoch", type=int, default=2)
    p.add_argument("--save-optimizer-state", action="store_true")
    p.add_argument("--use-ema", action="store_true")
    p.add_argument("--ema-decay", type=float, default=0.9)
    p.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--global-seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--resume-module-root", default=None, help="a tag's mp_rank_00_model_states.pt")
    p.add_argument("--resume-ema-root", default=None)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--depth", type=int, default=1)
    # evaluation (the demo's protocol and evaluators)
    p.add_argument("--num-eval-prompts", type=int, default=24)
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--eval-every-n-checkpoints", type=int, default=1)
    p.add_argument("--save-top-k", type=int, default=2)
    p.add_argument("--keep-every-n-steps", type=int, default=0)
    p.add_argument("--timings-out", default=None)
    return p.parse_args(argv)


def create_exp_folder(args: argparse.Namespace, rank: int) -> tuple[str, str, logging.Logger]:
    """HunyuanDiT's: a new ``{results_dir}/{NNN}-{task_flag}`` per launch; other ranks get ``experiment_dir = ""``."""
    if rank == 0:
        os.makedirs(args.results_dir, exist_ok=True)
    dist.barrier()
    existed = sorted(Path(args.results_dir).glob("*dit*"))
    index = max([int(x.stem.split("-")[0]) for x in existed], default=0) + 1
    dist.barrier()
    experiment_dir = f"{args.results_dir}/{index:03d}-{args.task_flag}"
    checkpoint_dir = f"{experiment_dir}/checkpoints"
    logger = logging.getLogger("train_deepspeed")
    if rank == 0:
        os.makedirs(checkpoint_dir, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s",
                            handlers=[logging.StreamHandler(), logging.FileHandler(f"{experiment_dir}/log.txt")])
        logger.info(f"Experiment directory created at {experiment_dir}")
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        experiment_dir = ""
    return experiment_dir, checkpoint_dir, logger


def save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by="step"):  # type: ignore[no-untyped-def]
    def save_model_weight(client_state, tag):  # type: ignore[no-untyped-def]
        checkpoint_path = f"{checkpoint_dir}/{tag}"
        try:
            model.save_checkpoint(checkpoint_dir, client_state=client_state, tag=tag)
            logger.info(f"Saved checkpoint to {checkpoint_path}")
        except Exception as e:
            logger.error(f"Saved failed to {checkpoint_path}. {type(e)}: {e}")
            return False, ""
        return True, checkpoint_path

    client_state = {"steps": train_steps, "epoch": epoch, "args": args}
    if ema is not None:
        client_state["ema"] = ema.state_dict()

    dst_paths = []
    if by == "epoch":
        dst_paths.append(save_model_weight(client_state, f"e{epoch:04d}.pt"))
    elif by == "step":
        if train_steps % args.ckpt_every == 0:
            dst_paths.append(save_model_weight(client_state, f"{train_steps:07d}.pt"))
        if train_steps % args.ckpt_latest_every == 0 or train_steps == args.max_training_steps:
            dst_paths.append(save_model_weight(client_state, "latest.pt"))
    elif by == "final":
        dst_paths.append(save_model_weight(client_state, "final.pt"))
    else:
        raise ValueError(f"Unknown save checkpoint method: {by}")

    saved = any([state for state, _ in dst_paths])
    if not saved:
        return False

    if not args.save_optimizer_state:
        dist.barrier()
        if rank == 0 and len(dst_paths) > 0:
            # Upstream writes `for dst_path in dst_paths:` and formats the (ok, path) tuple into the glob, which
            # never matches: the stock script deletes nothing (Tencent/HunyuanDiT 368280e). Here the deletion it
            # intends, so the tests cover a script that deletes files inside the tags it saved.
            for _, dst_path in dst_paths:
                for opt_state_path in glob(f"{dst_path}/zero_*_optim_states.pt"):
                    os.remove(opt_state_path)

    bestckpt_hydit.tags_saved(rank, dst_paths, train_steps, epoch)  # bestckpt
    return True


def model_resume(args, model, ema, logger, steps_per_epoch):  # type: ignore[no-untyped-def]
    """HunyuanDiT's weights-only resume: module (and EMA) from files; steps and epoch from the client state."""
    resume_ckpt = torch.load(args.resume_module_root, map_location="cpu", weights_only=False)
    model.load_state_dict(resume_ckpt["module"])
    logger.info(f"    Resume from checkpoint {args.resume_module_root}")
    if ema is not None:
        ema_ckpt = torch.load(args.resume_ema_root or args.resume_module_root, map_location="cpu", weights_only=False)
        ema.load_state_dict(ema_ckpt["ema"] if "ema" in ema_ckpt else ema_ckpt["module"])
    train_steps = int(resume_ckpt["steps"])
    return model, ema, int(resume_ckpt["epoch"]), train_steps % steps_per_epoch, train_steps


@torch.no_grad()
def update_ema(ema: TinyDiT, engine, decay: float, zero3: bool) -> None:  # type: ignore[no-untyped-def]
    """ema <- decay * ema + (1 - decay) * model; under ZeRO-3 the partitioned weights are gathered (every rank)."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params) if zero3 else nullcontext():
        for pe, pm in zip(ema.parameters(), params):
            pe.mul_(decay).add_(pm.detach().float(), alpha=1 - decay)


def main(args: argparse.Namespace) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    world_size, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(args.global_seed)  # the same initial weights on every rank
    experiment_dir, checkpoint_dir, logger = create_exp_folder(args, rank)
    if rank == 0:
        with open(f"{experiment_dir}/args.json", "w") as f:
            json.dump(dict(vars(args), world_size=world_size), f, indent=4)

    model = TinyDiT(config_from_args(args))
    ema = deepcopy(model).requires_grad_(False) if args.use_ema else None
    data = _TrainData(Tokenizer(), args.global_seed)
    start_epoch, start_epoch_step, train_steps = 0, 0, 0
    if args.resume:
        model, ema, start_epoch, start_epoch_step, train_steps = model_resume(args, model, ema, logger,
                                                                             args.epoch_steps)
    config = {"train_batch_size": args.batch_size * world_size, "train_micro_batch_size_per_gpu": args.batch_size,
              "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": args.zero_stage}, "zero_allow_untested_optimizer": True}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

    # the demo's evaluation protocol (held-out prompts, exact reference renders), written on rank 0
    protocol = build_protocol(argparse.Namespace(num_eval_prompts=args.num_eval_prompts, seed=0,
                                                 samples_per_prompt=args.samples_per_prompt,
                                                 sample_steps=args.sample_steps, guidance=args.guidance),
                              Path(experiment_dir) / "protocol") if rank == 0 else None
    bestckpt_hydit.start(checkpoint_dir, rank, protocol, "bestckpt.demo.tag_sampler:make_sampler",  # bestckpt
                         every_n_checkpoints=args.eval_every_n_checkpoints, save_top_k=args.save_top_k,  # bestckpt
                         keep_every_n_steps=args.keep_every_n_steps)  # bestckpt
    registrar = bestckpt_hydit.active()  # rank 0: its blocked_s feed --timings-out
    dist.barrier()

    epoch, running_loss, log_steps = start_epoch, 0.0, 0
    while epoch < args.epochs:
        logger.info(f"    Beginning epoch {epoch}...")
        for _ in range(start_epoch_step, args.epoch_steps):
            x0, tokens, g = data.batch(train_steps * world_size + rank, args.batch_size)
            drop = torch.rand(args.batch_size, generator=g) < 0.1  # caption dropout (CFG)
            drop[0] = True  # every rank uses the null caption: ZeRO's gradient buckets match across ranks
            loss = flow_matching_loss(model, x0, tokens, drop, g)
            model.backward(loss)
            model.step()
            if ema is not None:
                update_ema(ema, model, min(args.ema_decay, (1 + train_steps) / (10 + train_steps)), args.zero_stage == 3)
            running_loss += loss.item()
            log_steps += 1
            train_steps += 1
            if train_steps % args.log_every == 0:
                avg_loss = torch.tensor(running_loss / log_steps)
                dist.all_reduce(avg_loss, op=dist.ReduceOp.SUM)
                logger.info(f"(step={train_steps:07d}) Train Loss: {avg_loss.item() / world_size:.4f}")
                running_loss, log_steps = 0.0, 0
            if (train_steps % args.ckpt_every == 0 or train_steps % args.ckpt_latest_every == 0) and train_steps > 0:
                save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by="step")
            if train_steps >= args.max_training_steps:
                logger.info(f"Breaking step loop at train_steps={train_steps}.")
                break
        start_epoch_step = 0
        if train_steps >= args.max_training_steps:
            logger.info(f"Breaking epoch loop at epoch={epoch}.")
            break
        if args.ckpt_every_n_epoch > 0 and epoch % args.ckpt_every_n_epoch == 0:
            save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by="epoch")
        epoch += 1

    save_checkpoint(args, rank, logger, model, ema, epoch, train_steps, checkpoint_dir, by="final")
    bestckpt_hydit.close(rank)  # bestckpt: waits for queued evaluations, logs the summary
    if registrar is not None and args.timings_out:
        Path(args.timings_out).write_text(json.dumps({"stack": "hunyuandit", "blocked_s": registrar.blocked_s}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(get_args(sys.argv[1:]))
