"""`bestckpt release DIR STEP [STEP...]`: stop protecting pending checkpoints whose evaluation will
never come (an evaluator that died, a schedule that changed). Each becomes ``saved``: prunable like
any unevaluated checkpoint, and retention runs at once. All the steps or none; `bestckpt status DIR`
shows which pending checkpoints are stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bestckpt.errors import BestckptError
from bestckpt.tracking.layout import STATE_FILE
from bestckpt.tracking.pending import check_releasable

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("release", help="stop protecting pending checkpoints whose evaluation will never come",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir", type=Path, help="the checkpoint directory (holds best_checkpoints.json)")
    p.add_argument("steps", type=int, nargs="+", metavar="STEP", help="a pending step to release (repeatable)")
    p.set_defaults(func=run)
    return p


def _error(message: str) -> int:
    print(f"bestckpt: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from bestckpt.tracking.tracker import BestCheckpointTracker

    directory: Path = args.checkpoint_dir
    if not directory.is_dir():
        return _error(f"{directory} is not a directory; pass the checkpoint directory of a run")
    if not (directory / STATE_FILE).exists():
        return _error(f"{directory} has no {STATE_FILE}: no checkpoint is tracked there, so step(s) "
                      f"{args.steps} cannot be released; pass the checkpoint directory of a run")
    try:
        reader = BestCheckpointTracker.open(directory, is_writer=False)  # refuse bad steps before writing
        check_releasable({r.step: r for r in reader.records}, args.steps, directory)
        tracker = BestCheckpointTracker.open(directory, is_writer=True)
        steps = tracker.release(*args.steps)
        records = {r.step: r for r in tracker.records}
    except (BestckptError, OSError, ValueError, TypeError) as exc:
        return _error(str(exc))
    for step in steps:
        fate = "deleted by retention" if records[step].pruned else "kept by another rule for now"
        print(f"released step {step} ({records[step].path}): no longer pending; {fate}")
    return 0
