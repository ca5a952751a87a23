"""Train the tiny text-to-image DiT on synthetic captioned shapes, keeping the best checkpoints.

The demo's whole training script, in the style of DiT's ``train.py``: ``main(args)`` reads top to
bottom (model, data, best-checkpoint tracking, the loop, finish); the options and their defaults
live in ``recipe.py`` (torch-free, so the CLI starts fast). It shows bestckpt the way a user wires
it: one :class:`~bestckpt.integrations.loop.TrainingEvaluation` that evaluates every 2nd checkpoint
in a background process while training goes on, keeps the top 3 by the composite score, ``best.pt``,
one checkpoint every N steps and the latest (the resume point), and writes the summary, the results
JSON, TensorBoard tags, evaluation samples and the HTML report. Re-running with the same
``--run-dir`` resumes from the newest checkpoint and finishes evaluations an interrupted run left
pending.

The model (``model.TinyDiT``) is trained with the rectified-flow objective (straight paths from
data to noise), classifier-free guidance through caption dropout, EMA weights and AdamW. The
evaluators are the demo's own (trained on this data: the standard backbones cannot be downloaded
offline and mean little on 32x32 shapes); the evaluation prompts are held-out attribute
combinations that training never draws. Measurements and the run directory's layout:
``docs/demo.md``.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import time
import warnings
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bestckpt import fsio
from bestckpt.demo.data import (
    Tokenizer,
    caption,
    combinations,
    eval_prompts,
    reference_images,
    render,
)
from bestckpt.demo.model import DiTConfig, TinyDiT
from bestckpt.demo.recipe import (  # the options (torch-free)
    add_arguments,
    default_threads,
    resolve_defaults,
)
from bestckpt.sinks.options import sink_spec

__all__ = [
    "DEMO_BACKBONES",
    "SAMPLER_SPEC",
    "TrainObserver",
    "TrainResult",
    "add_arguments",
    "DEMO_COMPOSITE_MAPPINGS",
    "best_accuracy",
    "build_protocol",
    "find_resume_checkpoint",
    "flow_matching_loss",
    "learning_rate",
    "default_threads",
    "load_resume_checkpoint",
    "main",
    "resolve_defaults",
    "save_checkpoint",
    "start_evaluation",
    "update_ema",
]

logger = logging.getLogger(__name__)

#: The built-in demo evaluators (``bestckpt.demo.evaluators``), selected explicitly: never the default.
DEMO_BACKBONES = {"inception": "demo-classifier", "clip": "demo-clip", "lpips": "demo-lpips"}
#: The demo protocol's composite mappings, with scales suited to the demo evaluators (``bestckpt.evaluation.composite``):
#: their FID runs ~1,300 (noise) -> ~100 (a trained model) where Inception's good models score tens (default scale
#: 50: the whole demo run would move the composite by ~0.02); their LPIPS runs ~0.9 -> ~0.1. Scale = value mapped to 0.5.
DEMO_COMPOSITE_MAPPINGS = {"fid": {"type": "inverse", "scale": 300.0}, "lpips": {"type": "inverse", "scale": 0.25}}
#: The sampler, named as a spec so the background worker process can build it.
SAMPLER_SPEC = "bestckpt.demo.sampler:make_sampler"


class TrainObserver:
    """Hooks the CLI uses to draw progress; the training script itself stays silent (logging only)."""

    def on_start(self, start_step: int, total_steps: int) -> None: ...

    def on_step(self, step: int, loss: float) -> None: ...

    def on_checkpoint(self, step: int, path: Path, evaluate: bool) -> None: ...

    def on_evaluated(self, step: int, scores: dict[str, float | None], new_best: bool) -> None: ...

    def on_phase(self, text: str) -> None: ...


@dataclass
class TrainResult:
    """What ``main`` returns: where things are and how the run went."""

    run_dir: Path
    checkpoint_dir: Path
    start_step: int
    final_step: int
    train_seconds: float
    losses: list[tuple[int, float]]
    summary: dict[str, Any]
    report: Path | None
    #: the best checkpoint's per-attribute accuracy (``accuracy.json``; None without evaluation or a best)
    accuracy: dict[str, Any] | None = None


# --------------------------------------------------------------------------------- training pieces

def flow_matching_loss(model: TinyDiT, x0: Tensor, tokens: Tensor, drop: Tensor, generator: torch.Generator) -> Tensor:
    """Rectified-flow loss for a batch: x0 [N, 3, H, W] in [-1, 1], tokens [N, L], drop [N] bool.

    t ~ logit-normal(0, 1) (SD3's choice: more weight on the middle times, where the velocity is
    hardest to predict); x_t = (1 - t) x0 + t eps; target v = eps - x0; mean squared error."""
    n = x0.shape[0]
    t = torch.sigmoid(torch.randn(n, generator=generator))  # [N] in (0, 1)
    eps = torch.randn(x0.shape, generator=generator)
    tb = t[:, None, None, None]
    xt = (1 - tb) * x0 + tb * eps
    v = model(xt, t, tokens, drop)
    return (v - (eps - x0)).pow(2).mean()


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """The recipe's learning rate at ``step`` (0-based): linear warm-up over ``--warmup`` steps, then constant or
    (``--lr-schedule cosine``) a cosine decay to ``--min-lr-ratio`` of ``--lr`` at ``--steps``."""
    lr = args.lr * min(1.0, (step + 1) / args.warmup)
    if getattr(args, "lr_schedule", "constant") == "cosine":
        floor = float(getattr(args, "min_lr_ratio", 0.1))
        lr *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, args.steps) / args.steps))
    return lr


@torch.no_grad()
def update_ema(ema: TinyDiT, model: TinyDiT, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically and durably: a unique temp file in the same directory, fsync, ``os.replace``.

    A reader (the background evaluator, a sidecar, a resume) never sees a half-written file. The
    temporary name is unique and created exclusively (``"xb"``), so concurrent writers never share it
    and a symlink planted there is never followed; it is not a ``.bestckpt-`` name, which a starting
    tracker would clean up as its own leftover while this process is still writing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        fsio.unlink_quiet(tmp)
        raise
    fsio.fsync_dir(path.parent)


def find_resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest step checkpoint file (``{step:07d}.pt``, never ``best.pt``) in ckpt_dir, or None."""
    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.layout import find_checkpoints

    found = find_checkpoints(ckpt_dir, TrackerConfig(ckpt_dir).step_from_name)
    files = [path for _, path, complete in found if complete and path.is_file()]
    return files[-1] if files else None


def load_resume_checkpoint(ckpt_dir: Path, cfg: DiTConfig, model: TinyDiT, ema: TinyDiT,
                           opt: torch.optim.Optimizer) -> int:
    """Restore model, EMA and optimiser from the newest checkpoint; returns its step (0 if none)."""
    resume = find_resume_checkpoint(ckpt_dir)
    if resume is None:
        return 0
    ckpt = torch.load(resume, map_location="cpu", weights_only=False)
    if ckpt.get("model_config") != cfg.to_dict():
        raise ValueError(f"{resume} was trained with model {ckpt.get('model_config')}, not {cfg.to_dict()}; "
                         "resume with the same --hidden/--depth or use a new --run-dir")
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    logger.info("Resuming from %s (step %d)", resume, int(ckpt["step"]))
    return int(ckpt["step"])


class _TrainData:
    """All training combinations pre-rendered once (the render is a pure function of the
    attributes: 1701 images, ~5 MB), sampled with replacement by a seeded generator.

    batch(step) -> (images [B, 3, 32, 32] in [-1, 1], tokens [B, L]) depends only on (seed, step),
    so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, tokenizer: Tokenizer, seed: int) -> None:
        combos = combinations("train")
        self.images = torch.stack([render(a) for a in combos]).float() / 127.5 - 1.0  # [M, 3, 32, 32]
        self.tokens = tokenizer.encode([caption(a) for a in combos])  # [M, L]
        self.seed = seed

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor, torch.Generator]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(len(self.images), (batch_size,), generator=g)
        return self.images[idx], self.tokens[idx], g


# --------------------------------------------------------------------------------- evaluation set-up

def build_protocol(args: argparse.Namespace, protocol_dir: Path) -> Any:
    """The evaluation protocol: held-out prompts, one exact reference render each (PNG, lossless).

    The same renders serve as paired references (LPIPS, comparison images) and as the FID/KID
    reference set, so a perfect model would score FID ~ 0 against them. The protocol is written to
    ``protocol.json`` so ``bestckpt evaluate``/``watch`` can re-score the run offline."""
    from PIL import Image

    from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning
    from bestckpt.evaluation.sampler import SamplerSettings

    ref_dir = protocol_dir / "references"
    ref_dir.mkdir(parents=True, exist_ok=True)
    prompts = eval_prompts(args.num_eval_prompts, seed=args.seed)
    refs = reference_images([attrs for _, attrs in prompts])  # uint8 [P, 3, 32, 32]
    paths = []
    for i, image in enumerate(refs):
        path = ref_dir / f"ref_{i:03d}.png"
        if not path.is_file():  # deterministic renders: an existing file is identical
            png = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(png, format="PNG")
            fsio.atomic_write_bytes(path, png.getvalue())
        paths.append(path)
    with warnings.catch_warnings():
        # The protocol's generic warning is about 2048-d Inception features (FID needs N > 2048).
        # The demo classifier's pool features are 128-d, so 189 references and 189 samples (one per prompt) give
        # full-rank covariances; IS at ~38 images per split stays a rough figure, which the metrics
        # note in the worker log.
        warnings.simplefilter("ignore", SmallSampleWarning)
        protocol = Protocol(
            prompts=tuple(c for c, _ in prompts), reference_images=tuple(paths), reference_dir=ref_dir,
            num_samples=args.num_eval_prompts * args.samples_per_prompt, seed=args.seed,
            sampler=SamplerSettings(num_steps=args.sample_steps, guidance_scale=args.guidance, image_size=32),
            backbones=dict(DEMO_BACKBONES), name="bestckpt-demo", composite_mappings=DEMO_COMPOSITE_MAPPINGS,
        )
    protocol.to_file(protocol_dir / "protocol.json")
    return protocol


def start_evaluation(args: argparse.Namespace, obs: TrainObserver) -> Any:
    """The run's :class:`~bestckpt.integrations.loop.TrainingEvaluation`: the guide's tracker, and
    (unless ``--no-eval``) every ``--eval-every-n-checkpoints``-th checkpoint scored in a worker process."""
    from bestckpt.integrations.loop import TrainingEvaluation
    from bestckpt.runners import EvalSchedule

    run_dir: Path = args.run_dir
    tracking = dict(metric_name="composite_score", higher_is_better=True, save_top_k=args.save_top_k,
                    keep_latest=1,  # never delete the resume point
                    keep_every_n_steps=args.keep_every_n_steps or None)
    if args.no_eval:
        return TrainingEvaluation(run_dir / "checkpoints", None, SAMPLER_SPEC, mode="off", **tracking)
    protocol = build_protocol(args, run_dir / "protocol")
    logger.info("Evaluation: %d held-out prompts x %d seeds, demo evaluators %s (not the standard backbones: "
                "they cannot be downloaded offline and are meaningless on 32x32 shapes)",
                args.num_eval_prompts, args.samples_per_prompt, ", ".join(DEMO_BACKBONES.values()))
    # The worker process logs every evaluation's details (and the metrics' sample-size notes) to a
    # file; TrainingEvaluation echoes the guide's lines in this process and re-queues checkpoints an
    # interrupted run left pending.
    (run_dir / "logs").mkdir(exist_ok=True)
    return TrainingEvaluation(
        run_dir / "checkpoints", protocol, SAMPLER_SPEC, mode="background",
        # the guide's rule: step % (ckpt_every * 2) == 0, stateless so a resumed run agrees
        schedule=EvalSchedule(every_n_checkpoints=args.eval_every_n_checkpoints,
                              checkpoint_every_steps=args.ckpt_every),
        tensorboard_dir=run_dir / "tensorboard_logs", cache_dir=run_dir / "cache", batch_size=64,
        worker_threads=1, log_file=run_dir / "logs" / "evaluation_worker.log", sinks=sink_spec(args),
        on_result=lambda r: obs.on_evaluated(r.step, dict(r.scores), r.new_best) if r.ok else None,
        **tracking,
    )


def best_accuracy(args: argparse.Namespace, tracker: Any) -> dict[str, Any] | None:
    """What the best checkpoint learned: per-attribute accuracy on the evaluation prompts by the demo classifier
    and by the nearest exact render (``bestckpt.demo.accuracy``), written to ``RUN_DIR/accuracy.json`` for the
    report and attached to the best's record (``tracker.annotate``). The images are the ones its evaluation
    drew (same prompts, seeds and sampler settings)."""
    import json

    from bestckpt.demo.accuracy import checkpoint_accuracy, format_accuracy
    from bestckpt.evaluation.protocol import Protocol

    best = tracker.best
    path = None if best is None else Path(tracker.config.checkpoint_dir) / best.path
    if path is None or not path.is_file():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the protocol's sample-size warnings were shown when it was made
        protocol = Protocol.from_file(args.run_dir / "protocol" / "protocol.json")
    acc = checkpoint_accuracy(path, protocol, num_prompts=args.num_eval_prompts)
    fsio.atomic_write_text(args.run_dir / "accuracy.json", json.dumps(acc, indent=2, sort_keys=True) + "\n")
    # in the state with the best's record: the summary, the results JSON, the sinks and `bestckpt export` get it
    tracker.annotate(best.step, "accuracy", {k: acc[k] for k in ("classifier", "nearest_render", "num_prompts")})
    logger.info("Best checkpoint (step %s) attribute accuracy: classifier %s; nearest exact render %s", acc["step"],
                format_accuracy(acc["classifier"]), format_accuracy(acc["nearest_render"]))
    return acc


# --------------------------------------------------------------------------------- the script

def main(args: argparse.Namespace, observer: TrainObserver | None = None) -> TrainResult:
    """Train (or resume), checkpoint, evaluate in the background, and write the report."""
    from torch.utils.tensorboard import SummaryWriter

    args = resolve_defaults(args)
    obs = observer or TrainObserver()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)

    run_dir: Path = args.run_dir
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    # ---- model, EMA, optimiser (restored from the newest checkpoint when resuming) ----------
    tokenizer = Tokenizer()
    cfg = DiTConfig(vocab_size=tokenizer.vocab_size, max_tokens=tokenizer.max_length, pad_id=Tokenizer.PAD,
                    hidden=args.hidden, depth=args.depth, heads=4, patch_size=4)
    model = TinyDiT(cfg)  # ~0.75 M parameters with the defaults
    ema = deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start_step = load_resume_checkpoint(ckpt_dir, cfg, model, ema, opt)
    logger.info("TinyDiT: %.2f M parameters; training to step %d with batches of %d on %d CPU thread(s)",
                model.num_parameters() / 1e6, args.steps, args.batch_size, threads)

    # ---- data -------------------------------------------------------------------------------
    data = _TrainData(tokenizer, args.seed)
    steps_per_epoch = max(1, len(data.images) // args.batch_size)  # an "epoch" = one pass over the combinations

    # ---- best-checkpoint tracking, evaluated in a background process; training-loss logging --
    evaluation = start_evaluation(args, obs)
    writer = SummaryWriter(str(run_dir / "tensorboard_logs"), filename_suffix=".train")
    obs.on_start(start_step, args.steps)

    # ---- the loop ---------------------------------------------------------------------------
    model.train()
    losses: list[tuple[int, float]] = []
    t0 = time.time()
    step = start_step
    finished = False
    accuracy = None
    try:
        while step < args.steps:
            x0, tokens, g = data.batch(step, args.batch_size)  # [B, 3, 32, 32] in [-1, 1], [B, L]
            drop = torch.rand(args.batch_size, generator=g) < args.caption_dropout  # [B]: CFG caption dropout
            lr = learning_rate(step, args)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = flow_matching_loss(model, x0, tokens, drop, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            # EMA warm-up: early on, averaging in the random initialisation would only slow it down.
            update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}; lower --lr (now {args.lr})")
            losses.append((step, value))
            if step % 10 == 0:
                writer.add_scalar("Train/Loss", value, step)
                writer.add_scalar("Train/LearningRate", lr, step)
            obs.on_step(step, value)

            if step % args.ckpt_every == 0 or step == args.steps:
                epoch = step // steps_per_epoch
                path = ckpt_dir / f"{step:07d}.pt"
                save_checkpoint(path, {
                    "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "step": step, "epoch": epoch, "model_config": cfg.to_dict(),
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                })
                # returns at once: the worker samples and scores while we keep training
                queued = evaluation.checkpoint_saved(step, path, epoch)
                obs.on_checkpoint(step, path, bool(queued))
            evaluation.poll()  # results that arrived: the guide's log lines, the progress bar's best
        finished = True
    finally:  # Ctrl-C or a crash: stop at once; queued checkpoints stay "pending" for the next run
        train_seconds = time.time() - t0
        writer.close()
        if not finished and evaluation.mode == "background":
            logger.warning("stopping without waiting for queued evaluations; re-run to resume and finish them")
        try:
            if finished and not args.no_eval:  # every evaluation in, the best is final: what did it learn?
                obs.on_phase("finishing background evaluations")
                evaluation.wait()
                accuracy = best_accuracy(args, evaluation.tracker)  # attached to the best: the sinks get it
        finally:
            evaluation.close(wait=finished)  # the guide's "=== Best Checkpoint Summary ===", the results JSON

    # ---- finish -----------------------------------------------------------------------------
    report = None
    if not args.no_report:
        from bestckpt.sinks.report import write_report

        report = write_report(run_dir)
        logger.info("Report written to %s", report)
    return TrainResult(run_dir, ckpt_dir, start_step, step, train_seconds, losses, evaluation.tracker.summary(),
                       report, accuracy)


if __name__ == "__main__":
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parser.parse_args())
