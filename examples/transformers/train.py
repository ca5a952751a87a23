"""Train the demo's tiny text-to-image DiT with the Hugging Face Trainer; bestckpt keeps the best checkpoints.

    python examples/transformers/train.py --output-dir runs/hf --steps 400 --ckpt-every 20
    torchrun --nproc_per_node 2 examples/transformers/train.py --output-dir runs/hf2   # CPU: DDP over gloo

The Trainer trains and saves ``OUTPUT_DIR/checkpoint-N`` every ``--ckpt-every`` steps
(``TrainingArguments.save_steps``; ``--steps`` is ``max_steps``, ``--output-dir`` is ``output_dir``). One
callback does the rest (the lines marked ``# bestckpt``): every 2nd checkpoint is scored in a background
process on the demo's held-out prompts with the demo's evaluators, ``best.pt`` points at the best,
the top ``--save-top-k``, the latest and one every ``--keep-every-n-steps`` steps are kept, the rest
pruned; the guide's log lines, ``best_checkpoint_results.json``, ``evaluation_samples/`` and the
``Evaluation/*`` TensorBoard tags (``tensorboard_logs/``) appear as in ``bestckpt demo``. Re-running with
the same ``--output-dir`` resumes from the newest checkpoint (the Trainer's ``resume_from_checkpoint``).
``--timings-out PATH`` writes ``{"stack": "transformers", "blocked_s": [...]}``: per checkpoint, the
seconds training spent inside bestckpt (``bench/``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch
from tiny_dit_hf import CaptionedShapes, FlowMatchingDiT, model_config
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from bestckpt.demo.recipe import default_threads
from bestckpt.demo.train import build_protocol
from bestckpt.integrations.transformers import BestCheckpointCallback  # bestckpt


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, default=Path("runs/transformers"), help="TrainingArguments.output_dir")
    p.add_argument("--steps", type=int, default=400, help="TrainingArguments.max_steps (default: 400)")
    p.add_argument("--ckpt-every", type=int, default=20, help="TrainingArguments.save_steps (default: 20)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step and process (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate after warm-up (default: 1e-3)")
    p.add_argument("--save-top-k", type=int, default=3, help="checkpoints kept by score (default: 3)")
    p.add_argument("--keep-every-n-steps", type=int, default=200, help="also keep one every N steps (0: off)")
    p.add_argument("--num-eval-prompts", type=int, default=24, help="held-out evaluation prompts (default: 24; 189: all)")
    p.add_argument("--sample-steps", type=int, default=12, help="Euler steps when sampling (default: 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timings-out", type=Path, default=None, help="write per-checkpoint blocked seconds (JSON)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # > 1 under torchrun
    torch.set_num_threads(max(1, default_threads() // world))
    out: Path = args.output_dir
    training = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, save_steps=args.ckpt_every, save_total_limit=None,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=min(50, args.steps // 5),
        lr_scheduler_type="constant_with_warmup", weight_decay=0.0, adam_beta2=0.99, max_grad_norm=1.0,
        logging_steps=max(1, args.ckpt_every), report_to="none", seed=args.seed, dataloader_num_workers=0,
        disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), ddp_backend=None if torch.cuda.is_available() or world == 1 else "gloo")
    # the evaluation: held-out prompts, reference renders, the demo's sampler settings (written to protocol/)
    protocol = build_protocol(argparse.Namespace(num_eval_prompts=args.num_eval_prompts, seed=args.seed,  # bestckpt
                                                 samples_per_prompt=1, sample_steps=args.sample_steps, guidance=3.0),
                              out / "protocol")
    callback = BestCheckpointCallback(protocol, "tiny_dit_hf:make_sampler", save_top_k=args.save_top_k,  # bestckpt
                                      keep_every_n_steps=args.keep_every_n_steps, cache_dir=out / "cache")
    trainer = Trainer(FlowMatchingDiT(model_config()), training, train_dataset=CaptionedShapes(),
                      callbacks=[callback])  # bestckpt: the callback
    resume = get_last_checkpoint(str(out)) if out.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        best = (out / "best.pt").resolve() if (out / "best.pt").exists() else None
        print(f"done at step {trainer.state.global_step}; best checkpoint: {best}")
        if args.timings_out is not None:
            args.timings_out.write_text(json.dumps({"stack": "transformers",
                                                    "blocked_s": callback.blocked_seconds}))  # bestckpt


if __name__ == "__main__":
    main()
