"""Trainer process for tests/test_sidecar.py: writes checkpoints and registers them with its tracker.

argv: CKPT_DIR N_CHECKPOINTS INTERVAL_S. Every 2nd checkpoint is scheduled for evaluation (pending);
the others are "saved". Prints ``saved STEP`` once the tracker registered each checkpoint (the test
waits for these lines). After each save it checks that no pending checkpoint was pruned and appends
any violation to CKPT_DIR/../violations.txt. The sleep between checkpoints stands for training work.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline_kit import save_checkpoint

from bestckpt.runners import EvalSchedule
from bestckpt.tracking.tracker import BestCheckpointTracker


def _check_pending(tracker: BestCheckpointTracker, ckpt_dir: Path, step: int, violations: Path) -> None:
    """Record a violation for every pending checkpoint that is not on disk any more."""
    for s in tracker.pending_steps():
        if not (ckpt_dir / f"{s:07d}.pt").exists():
            with open(violations, "a") as f:
                f.write(f"pending step {s} missing after saving {step}\n")


def main() -> None:
    ckpt_dir, n, interval = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    tracker = BestCheckpointTracker(ckpt_dir, save_top_k=2, keep_latest=1, keep_every_n_steps=0, is_writer=True)
    schedule = EvalSchedule()
    violations = ckpt_dir.parent / "violations.txt"
    for i in range(1, n + 1):
        step = i * 100
        path = save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)
        tracker.checkpoint_saved(step, path, epoch=0, evaluate=schedule.should_evaluate(step, i))
        print(f"saved {step}", flush=True)
        _check_pending(tracker, ckpt_dir, step, violations)
        time.sleep(interval)
    (ckpt_dir.parent / "trainer_done").write_text("done\n")


if __name__ == "__main__":
    main()
