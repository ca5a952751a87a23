"""`bestckpt prune DIR [--dry-run]`: apply retention now, printing every checkpoint with keep/delete
and the reason. Settings default to the ones stored in the directory's state, then to
:class:`bestckpt.tracking.config.TrackerConfig`'s defaults (one source of defaults for API and CLI).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bestckpt.tracking.config import default_of

__all__ = ["add_parser", "run", "add_config_options", "config_overrides"]


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Options mirroring TrackerConfig's fields; unset ones stay ``None`` (= stored value or default)."""
    p.add_argument("--metric-name", help=f"metric that ranks checkpoints (default: stored, else {default_of('metric_name')!r})")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_const", const=True,
                           help=f"the metric grows with quality (default: stored, else {default_of('higher_is_better')})")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_const", const=False,
                           help="the metric shrinks with quality (lpips, fid, kid)")
    p.add_argument("--save-top-k", type=int, help=f"keep the k best; -1 keeps all (default: stored, else {default_of('save_top_k')})")
    p.add_argument("--keep-latest", type=int, help=f"keep the n newest, n >= 1 (default: stored, else {default_of('keep_latest')})")
    p.add_argument("--keep-every-n-steps", type=int,
                   help=f"keep steps that are multiples of n; 0 disables (default: stored, else {default_of('keep_every_n_steps')})")
    p.add_argument("--pin", dest="pinned_steps", type=int, action="append", metavar="STEP",
                   help="never delete this step (repeatable; replaces the stored pins)")
    p.add_argument("--min-improvement", type=float,
                   help=f"margin a new best must win by (default: stored, else {default_of('min_improvement')})")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("metric_name", "higher_is_better", "save_top_k", "keep_latest", "keep_every_n_steps",
             "pinned_steps", "min_improvement")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "pinned_steps" in out:
        out["pinned_steps"] = tuple(out["pinned_steps"])
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prune", help="delete checkpoints that retention does not keep (--dry-run to preview)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir", type=Path, help="the checkpoint directory (holds best_checkpoints.json)")
    p.add_argument("--dry-run", action="store_true", help="only print what would be kept and deleted, and why")
    add_config_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from bestckpt.tracking.tracker import BestCheckpointTracker, StateError

    directory: Path = args.checkpoint_dir
    if not directory.is_dir():
        print(f"error: {directory} is not a directory; pass the checkpoint directory of a run", file=sys.stderr)
        return 2
    try:
        overrides = config_overrides(args)
        # A dry run opens read-only: it writes nothing at all (not even the state).
        tracker = BestCheckpointTracker.open(directory, is_writer=not args.dry_run, dry_run=False, **overrides)
        decisions = tracker.plan() if args.dry_run else tracker.prune(dry_run=False)
    except (ValueError, TypeError, StateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb_keep, verb_delete = ("KEEP", "DELETE") if args.dry_run else ("kept", "deleted")
    width = max((len(d.path) for d in decisions), default=0)
    for d in decisions:
        print(f"{(verb_keep if d.keep else verb_delete):<7} {d.path:<{width}}  step {d.step:>9}  {'; '.join(d.reasons)}")
    n_del = sum(1 for d in decisions if not d.keep)
    what = "would delete" if args.dry_run else "deleted"
    print(f"{len(decisions)} checkpoints: {len(decisions) - n_del} kept, {n_del} {what}")
    return 0
