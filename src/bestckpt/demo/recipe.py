"""The demo recipe: ``bestckpt demo`` / ``train.py`` options with their documented defaults.

Kept apart from ``train.py`` only so that building the ``bestckpt`` command line (every
subcommand registers its options) does not import torch: ``bestckpt status --help`` stays instant.
The reasons for each default are in the option's help text; ``train.py`` is the recipe's user.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bestckpt.sinks.options import add_sink_options

__all__ = ["add_arguments", "available_cores", "default_threads", "resolve_defaults"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo recipe. Defaults are tuned so the full demo ends in minutes on 2 CPU cores (``docs/demo.md``)."""
    p = parser
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="experiment directory (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None,
                   help="total training steps (default: 900, or 60 with --quick; the shape is learned in the last "
                        "third: docs/demo.md)")
    p.add_argument("--quick", action="store_true",
                   help="a short run for tests: few steps, few evaluation prompts (well under 2 minutes)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=6e-3,
                   help="AdamW learning rate after a linear warm-up (default: 6e-3: at 1e-3 the model learned size, "
                        "colour, position and background but drew every shape alike; docs/demo.md)")
    p.add_argument("--warmup", type=int, default=50, help="linear learning-rate warm-up steps (default: 50)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="after the warm-up: constant, or cosine decay to --min-lr-ratio of --lr at the last step "
                        "(default: constant: the shape is learned late, and a decaying rate slowed it; docs/demo.md)")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="with --lr-schedule cosine: the final learning rate as a fraction of --lr (default: 0.1)")
    p.add_argument("--ema-decay", type=float, default=0.99,
                   help="EMA decay cap after the warm-up min(decay, (1+n)/(10+n)), which governs most of a short run "
                        "(default: 0.99, reached at step 890)")
    p.add_argument("--caption-dropout", type=float, default=0.1,
                   help="probability of training a row unconditionally, for classifier-free guidance (default: 0.1)")
    p.add_argument("--ckpt-every", type=int, default=None,
                   help="save a checkpoint every N steps (default: 150, or 10 with --quick: with every 2nd evaluated, "
                        "steps 300, 600 and 900 are scored)")
    p.add_argument("--eval-every-n-checkpoints", type=int, default=2,
                   help="evaluate every Nth checkpoint in the background (the guide's default: 2)")
    p.add_argument("--save-top-k", type=int, default=3,
                   help="checkpoints kept by score (the guide's default: 3; -1 keeps every evaluated one)")
    p.add_argument("--keep-every-n-steps", type=int, default=None,
                   help="also keep one checkpoint every N steps (the guide's 10,000 scaled to the demo: default 450, "
                        "or 30 with --quick; 0 disables)")
    p.add_argument("--num-eval-prompts", type=int, default=None,
                   help="held-out evaluation prompts (default: all 189 held-out combinations, or 24 with --quick)")
    p.add_argument("--sample-steps", type=int, default=8,
                   help="Euler steps when sampling (default: 8: read as right as 12 at two thirds of the cost)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise (default: 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training (default: the cores other processes leave idle, >= 1)")
    p.add_argument("--samples-per-prompt", type=int, default=1,
                   help="images per evaluation prompt, each with its own seed (default: 1: all 189 held-out prompts "
                        "already give more samples than the demo classifier's 128 feature dimensions; 2 doubles the "
                        "evaluation cost for the same ranking on a 2-core machine)")
    p.add_argument("--hidden", type=int, default=96, help="DiT width (default: 96)")
    p.add_argument("--depth", type=int, default=3, help="DiT blocks (default: 3)")
    p.add_argument("--no-eval", action="store_true", help="train and checkpoint without evaluation")
    add_sink_options(p)
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick, validate, and return a copy."""
    a = argparse.Namespace(**vars(args))
    quick = bool(getattr(a, "quick", False))
    if a.steps is None:
        a.steps = 60 if quick else 900
    if a.ckpt_every is None:
        a.ckpt_every = 10 if quick else 150
    if a.keep_every_n_steps is None:
        a.keep_every_n_steps = 30 if quick else 450
    if a.num_eval_prompts is None:
        # Full demo: every held-out combination (189), so the FID/KID reference set has more images
        # than the 128-d feature dimension (a full-rank covariance) and matches what is generated.
        from bestckpt.demo.data import (
            combinations,  # imports torch: only when a run starts
        )

        a.num_eval_prompts = 24 if quick else len(combinations("heldout"))
    for name in ("steps", "ckpt_every", "batch_size", "num_eval_prompts", "sample_steps", "eval_every_n_checkpoints",
                 "samples_per_prompt", "hidden", "depth"):
        value = getattr(a, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value!r}: must be a positive integer")
    if not isinstance(a.save_top_k, int) or (a.save_top_k < 1 and a.save_top_k != -1):
        raise ValueError(f"--save-top-k={a.save_top_k!r}: must be a positive integer, or -1 to keep every evaluated one")
    if not 0.0 <= getattr(a, "min_lr_ratio", 0.1) <= 1.0:
        raise ValueError(f"--min-lr-ratio={a.min_lr_ratio}: must be in [0, 1]")
    if not 0.0 <= a.caption_dropout < 1.0:
        raise ValueError(f"--caption-dropout={a.caption_dropout}: must be in [0, 1)")
    if not 0.0 <= a.ema_decay < 1.0:
        raise ValueError(f"--ema-decay={a.ema_decay}: must be in [0, 1)")
    a.run_dir = Path(a.run_dir)
    return a


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Training threads: the cores not kept busy by other processes, at least 1.

    On an idle machine that is every core: the evaluation worker (1 thread) is busy only part of
    the time. On a machine others are loading (the 1-minute load average says how many cores they
    keep busy), extra intra-op threads only wait on each other. Measurements: ``docs/demo.md``."""
    cores = available_cores()
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, cores - busy)
