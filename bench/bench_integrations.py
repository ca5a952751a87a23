"""Training time blocked by bestckpt per checkpoint, in each training-stack example, against one
synchronous evaluation of the demo's protocol (189 held-out prompts).

    .venv/bin/python bench/bench_integrations.py                    # every stack whose example exists
    .venv/bin/python bench/bench_integrations.py --stacks lightning  # a subset

1. The reference: the demo's full evaluation protocol (189 prompts, the demo evaluators, 12 Euler
   steps) run synchronously inside the training process (:class:`~bestckpt.runners.InlineRunner`) on
   a checkpoint of the demo model: the time a training loop would be blocked if it evaluated inline.
   The first evaluation also builds the backbones and reference statistics; the steady-state figure
   (the second evaluation) is the reference, which makes the ratio conservative.
2. Each example under ``examples/<stack>/`` runs with its real framework and launcher (2 processes
   where the stack has a distributed launcher) and writes, from the process that registers
   checkpoints, the seconds its training loop spent inside bestckpt calls per checkpoint
   (``--timings-out``; the contract is in each example's docstring).

Target (issues 10 and 11): mean blocked time per checkpoint <= 2% of the synchronous evaluation.
Prints one line per stack with mean and max blocked time and both ratios. Measured on the 2-core development
machine, quiet: synchronous evaluation 2.62 s; blocked mean 5.3 ms (hunyuandit, 0.20%), 10.0 ms (diffusers,
0.38%), 10.8 ms (lightning, 0.41%), 7.8 ms (transformers, 0.30%).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "{port}"]
# `accelerate launch --cpu --num_processes 2` starts one process; two CPU processes need --multi_gpu with
# ACCELERATE_USE_CPU=true (set in run_stack's environment)
ACCELERATE = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "{port}"]

#: stack -> (launcher prefix, example script, its arguments); {out} is the run's output folder,
#: {timings} the JSON the example writes. Small runs: the figure is per checkpoint.
STACKS: dict[str, tuple[list[str], str, list[str]]] = {
    "hunyuandit": (TORCHRUN, "examples/hunyuandit/train_deepspeed.py",
                   ["--results-dir", "{out}", "--timings-out", "{timings}"]),
    "diffusers": (ACCELERATE, "examples/diffusers/train_text_to_image.py",
                  ["--output_dir", "{out}", "--timings-out", "{timings}"]),
    "lightning": ([PY], "examples/lightning/train.py", ["--output-dir", "{out}", "--timings-out", "{timings}"]),
    "transformers": ([PY], "examples/transformers/train.py", ["--output-dir", "{out}", "--timings-out", "{timings}"]),
}


def synchronous_evaluation(work: Path, threads: int) -> tuple[float, float]:
    """(first, steady-state) seconds of one inline evaluation of the demo's full protocol."""
    import torch

    from bestckpt.demo import recipe
    from bestckpt.demo.sampler import make_sampler
    from bestckpt.demo.train import build_protocol
    from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner
    from bestckpt.tracking.tracker import BestCheckpointTracker

    run = work / "demo"
    cli = [PY, "-c", "import sys; from bestckpt.cli import main; sys.exit(main())"]
    subprocess.run([*cli, "demo", "--run-dir", str(run), "--steps", "20", "--ckpt-every", "10", "--no-eval",
                    "--no-report", "--threads", str(threads)], check=True, timeout=900, stdout=subprocess.DEVNULL)
    args = recipe.resolve_defaults(recipe.add_arguments(argparse.ArgumentParser()).parse_args([]))
    args.num_eval_prompts = 189
    protocol = build_protocol(args, work / "protocol")
    torch.set_num_threads(threads)
    ckpt_dir = work / "inline"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, keep_every_n_steps=0)
    evaluator = Evaluator(protocol, make_sampler(), device="cpu", cache_dir=work / "cache", dist=None, batch_size=64)
    runner = InlineRunner(tracker, evaluator, EvalSchedule(every_n_checkpoints=1))
    seconds = []
    for step in (10, 20):
        path = ckpt_dir / f"{step:07d}.pt"
        shutil.copy2(run / "checkpoints" / "0000020.pt", path)  # the demo run keeps only its newest
        t = time.perf_counter()
        runner.checkpoint_saved(step, path, epoch=0)
        seconds.append(time.perf_counter() - t)
    runner.close()
    failed = [(r.step, r.error) for r in tracker.records if r.status != "evaluated"]
    if failed:
        raise SystemExit(f"the reference evaluation failed, no ratio can be reported: {failed}")
    return seconds[0], seconds[1]


def run_stack(name: str, work: Path, port: int, timeout: float) -> list[float]:
    launcher, script, script_args = STACKS[name]
    out, timings = work / name, work / f"{name}-timings.json"
    fill = lambda s: s.format(out=out, timings=timings, port=port)  # noqa: E731
    cmd = [fill(x) for x in launcher] + [str(ROOT / script)] + [fill(x) for x in script_args]
    env = dict(os.environ, DS_ACCELERATOR="cpu", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0 or not timings.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{name}: {' '.join(cmd)} exited {proc.returncode} without timings:\n{tail}")
    data = json.loads(timings.read_text())
    return [float(x) for x in data["blocked_s"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", nargs="*", default=None, help=f"subset of {sorted(STACKS)} (default: all present)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the reference evaluation")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per example run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = args.stacks or [n for n, (_, script, _) in STACKS.items() if (ROOT / script).is_file()]
    unknown = sorted(set(names) - set(STACKS))
    if unknown:
        print(f"unknown stack(s) {unknown}; choose from {sorted(STACKS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first, sync = synchronous_evaluation(work, args.threads)
        print(f"synchronous evaluation of the demo protocol (189 prompts, threads={args.threads}): "
              f"{sync:.2f} s steady state (first {first:.2f} s incl. backbone and reference build)")
        failures = 0
        for i, name in enumerate(names):
            try:
                blocked = run_stack(name, work, 29700 + i, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{name:13s}: FAILED: {exc}", file=sys.stderr)
                failures += 1
                continue
            mean, worst = statistics.fmean(blocked), max(blocked)
            ratio = mean / sync
            print(f"{name:13s}: {len(blocked)} checkpoints, blocked mean {mean * 1e3:8.1f} ms, max {worst * 1e3:8.1f} ms; "
                  f"mean/sync = {ratio:.4f}, max/sync = {worst / sync:.4f} (target mean <= 0.02: "
                  f"{'met' if ratio <= 0.02 else 'NOT met'})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
