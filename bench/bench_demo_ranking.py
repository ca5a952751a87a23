"""Benchmark: does the demo's evaluation rank checkpoints the way what they draw does?

A full demo run with every checkpoint evaluated and kept (``--eval-every-n-checkpoints 1 --save-top-k -1``), then
for every evaluated checkpoint the fraction of held-out prompts with all five attributes right
(:func:`bestckpt.demo.accuracy.checkpoint_accuracy`: the evaluation's own prompts, seeds and sampler; read by the demo
classifier and by the nearest exact render, which uses no network), and the Spearman rank correlation of the
composite with each. Target: >= 0.8 (issue 12).

Run: ``.venv/bin/python bench/bench_demo_ranking.py [--threads 2] [--run-dir DIR] [--reuse] [-- demo options]``;
``--reuse`` skips training and reads an earlier run in ``--run-dir``. Figures: ``docs/demo.md``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _train(run_dir: Path, threads: int, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "bestckpt", "demo", "--run-dir", str(run_dir), "--threads", str(threads),
           "--eval-every-n-checkpoints", "1", "--save-top-k", "-1", "--no-report", *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, COLUMNS="160"), timeout=4 * 3600)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--reuse", action="store_true", help="analyse the run already in --run-dir")
    p.add_argument("extra", nargs="*", help="further `bestckpt demo` options (after --)")
    a = p.parse_args(argv)
    import torch

    from bestckpt.demo.accuracy import ALL, checkpoint_accuracy, spearman
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.tracking.tracker import BestCheckpointTracker

    torch.set_num_threads(a.threads)
    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix="bench-demo-ranking-")) / "run"
    if not a.reuse:
        print(f"demo run: {_train(run_dir, a.threads, a.extra):.0f} s wall", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protocol = Protocol.from_file(run_dir / "protocol" / "protocol.json")
    tracker = BestCheckpointTracker.open(run_dir / "checkpoints")
    rows = []
    print(f"{'step':>6} {'composite':>9} {'all (classifier)':>17} {'all (nearest render)':>21}  shape (clf/nn)")
    for rec in tracker.records:
        path = run_dir / "checkpoints" / rec.path
        if rec.status != "evaluated" or rec.pruned or not path.is_file():
            continue
        acc = checkpoint_accuracy(path, protocol)
        rows.append((rec.step, rec.metrics["composite_score"], acc["classifier"][ALL], acc["nearest_render"][ALL]))
        print(f"{rec.step:>6} {rows[-1][1]:>9.4f} {rows[-1][2]:>17.3f} {rows[-1][3]:>21.3f}  "
              f"{acc['classifier']['shape']:.3f}/{acc['nearest_render']['shape']:.3f}", flush=True)
    composite = [r[1] for r in rows]
    rho_clf, rho_nn = spearman(composite, [r[2] for r in rows]), spearman(composite, [r[3] for r in rows])
    best = tracker.best
    print(f"{len(rows)} checkpoints; best by composite: step {None if best is None else best.step}; "
          f"best by all-five accuracy (nearest render): step {max(rows, key=lambda r: r[3])[0] if rows else None}")
    print(f"Spearman(composite, all-five accuracy): classifier {rho_clf:.3f}, nearest render {rho_nn:.3f} "
          f"(target >= 0.8)")
    return 0 if rho_clf >= 0.8 and rho_nn >= 0.8 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
