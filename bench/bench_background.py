"""Blocked training time per evaluated checkpoint: background worker vs inline (synchronous) evaluation.

A real (small) training loop saves a checkpoint every ``--steps-per-ckpt`` steps and tells a runner.
Inline, the loop is blocked for the whole evaluation; in the background it is blocked only while the
checkpoint is registered (tracker file lock + atomic state write) and the job is queued.
Target: blocked time in the background <= 2% of the synchronous evaluation time.

    python bench/bench_background.py                      # CPU, real Scorer with random-test backbones
    python bench/bench_background.py --device cuda        # same on a GPU

Prints one line per mode and the ratio. The evaluation is the real pipeline (sampler -> Scorer with
FID Inception, CLIP, LPIPS architectures (random weights: timing only) -> tracker).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny deterministic sampler lives with the tests

from pipeline_kit import TinySampler, write_reference_images  # noqa: E402

from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning  # noqa: E402
from bestckpt.evaluation.sampler import SamplerSettings  # noqa: E402
from bestckpt.runners import BackgroundRunner, EvalSchedule, Evaluator, InlineRunner  # noqa: E402
from bestckpt.tracking.tracker import BestCheckpointTracker  # noqa: E402

BACKBONES = {"inception": "inception-2015-12-05-random-test", "clip": "clip-tiny-random-test",
             "lpips": "lpips-alex-random-test"}


def make_protocol(work: Path, num_samples: int) -> Protocol:
    refs = write_reference_images(work / "refs", 4, size=48)
    write_reference_images(work / "refset", max(num_samples, 8), size=48, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(prompts=["a red square", "a blue circle", "a green star", "two dots"], reference_images=refs,
                        reference_dir=work / "refset", num_samples=num_samples, seed=0,
                        sampler=SamplerSettings(num_steps=1, image_size=64), backbones=BACKBONES,
                        metric_options={"inception_score": {"splits": 2},
                                        "kid": {"subsets": 10, "subset_size": min(num_samples, 8)}},
                        composite_weights={"clip_score": 0.4, "inception_score": 0.3, "lpips": 0.2, "fid": 0.1})


def train(runner, ckpt_dir: Path, n_ckpt: int, steps_per_ckpt: int, device: str) -> tuple[list[float], float]:
    """Train a small MLP; returns (blocked seconds per checkpoint, total loop seconds)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(192, 256), torch.nn.Tanh(), torch.nn.Linear(256, 192)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64, 192, device=device)
    blocked, step, t0 = [], 0, time.perf_counter()
    for _ in range(n_ckpt):
        for _ in range(steps_per_ckpt):
            loss = (model(x) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        w = model[2].weight.detach()[:, :1].reshape(3, 8, 8).cpu()
        path = ckpt_dir / f"{step:07d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"module": {"w": w.clone()}, "ema": {"w": w.clone()}, "steps": step}, tmp)
        tmp.replace(path)
        t = time.perf_counter()
        runner.checkpoint_saved(step, path, epoch=0)
        blocked.append(time.perf_counter() - t)
    return blocked, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--steps-per-ckpt", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        protocol = make_protocol(work, args.num_samples)
        every = EvalSchedule(every_n_checkpoints=1)

        # inline: the loop waits for each evaluation (the first one also builds backbones and reference stats)
        d1 = work / "inline"
        d1.mkdir()
        tracker = BestCheckpointTracker(d1, is_writer=True, keep_every_n_steps=0)
        evaluator = Evaluator(protocol, TinySampler(), device=args.device, cache_dir=work / "cache", dist=None)
        inline = InlineRunner(tracker, evaluator, every)
        blocked_inline, loop_inline = train(inline, d1, args.checkpoints, args.steps_per_ckpt, args.device)
        inline.close()
        sync = statistics.median(blocked_inline[1:] or blocked_inline)  # steady-state evaluation time

        # background: the loop only registers and queues
        d2 = work / "background"
        d2.mkdir()
        tracker2 = BestCheckpointTracker(d2, is_writer=True, keep_every_n_steps=0)
        bg = BackgroundRunner(tracker2, protocol, "pipeline_kit:make_sampler", schedule=every, device=args.device,
                              cache_dir=work / "cache", worker_threads=args.threads)
        blocked_bg, loop_bg = train(bg, d2, args.checkpoints, args.steps_per_ckpt, args.device)
        t = time.perf_counter()
        bg.close(wait=True)
        drain = time.perf_counter() - t
        ok = sum(1 for r in tracker2.records if r.status == "evaluated")
        failed = [(r.step, r.error) for t in (tracker, tracker2) for r in t.records if r.status != "evaluated"]

        # no evaluation at all: the loop's own cost
        d3 = work / "none"
        d3.mkdir()
        off = InlineRunner(BestCheckpointTracker(d3, is_writer=True, keep_every_n_steps=0), evaluator, EvalSchedule.off())
        blocked_off, loop_off = train(off, d3, args.checkpoints, args.steps_per_ckpt, args.device)

    if failed:  # a ratio over failed evaluations would be meaningless
        print(f"evaluation failed, no ratio reported: {failed[:3]}", file=sys.stderr)
        return 1
    med_bg = statistics.median(blocked_bg)
    print(f"device={args.device} threads={args.threads} num_samples={args.num_samples} checkpoints={args.checkpoints}")
    print(f"inline     : blocked per evaluated checkpoint median {sync * 1e3:9.1f} ms (first {blocked_inline[0] * 1e3:.0f} ms,"
          f" incl. backbone build); loop {loop_inline:.2f} s")
    print(f"background : blocked per evaluated checkpoint median {med_bg * 1e3:9.1f} ms (max {max(blocked_bg) * 1e3:.1f} ms,"
          f" first incl. worker start); loop {loop_bg:.2f} s; drain at close {drain:.2f} s; evaluated {ok}/{args.checkpoints}")
    print(f"no eval    : register only, median {statistics.median(blocked_off) * 1e3:9.1f} ms; loop {loop_off:.2f} s")
    ratio = med_bg / sync
    print(f"ratio blocked(background)/synchronous evaluation = {ratio:.4f}  (target <= 0.02: "
          f"{'met' if ratio <= 0.02 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
