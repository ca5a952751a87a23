"""`bestckpt prune DIR [--dry-run]`: apply retention now, printing every checkpoint with keep/delete
and the reason. Settings default to the ones stored in the directory's state, then to
:class:`bestckpt.tracking.config.TrackerConfig`'s defaults (one source of defaults for API and CLI).

Options that differ from the run's stored settings (direction, metric, top-k, pins...) change what
every process sharing the directory keeps: they need --reconfigure, print the plan, and delete only
with --yes (without it: exit code 2, nothing deleted). With --dry-run they are a read-only preview.
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--save-top-k", type=int,
                   help=f"keep the k best; -1 keeps all (default: stored, else {default_of('save_top_k')})")
    p.add_argument("--keep-latest", type=int,
                   help=f"keep the n newest, n >= 1 (default: stored, else {default_of('keep_latest')})")
    p.add_argument("--keep-every-n-steps", type=int,
                   help="keep steps that are multiples of n; 0 disables "
                        f"(default: stored, else {default_of('keep_every_n_steps')})")
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
    p.add_argument("--reconfigure", action="store_true",
                   help="change the run's stored settings to the options given (every process sharing the "
                        "directory then uses them); prints the plan, deletes only with --yes")
    p.add_argument("--yes", action="store_true", help="with --reconfigure: store the new settings and delete")
    p.set_defaults(func=run)
    return p


def _print_plan(decisions: list[Any], *, applied: bool) -> int:
    """Print every decision; returns how many checkpoints are (or would be) deleted."""
    verb_keep, verb_delete = ("kept", "deleted") if applied else ("KEEP", "DELETE")
    width = max((len(d.path) for d in decisions), default=0)
    for d in decisions:
        print(f"{(verb_keep if d.keep else verb_delete):<7} {d.path:<{width}}  step {d.step:>9}  {'; '.join(d.reasons)}")
    n_del = sum(1 for d in decisions if not d.keep)
    print(f"{len(decisions)} checkpoints: {len(decisions) - n_del} kept, {n_del} {'deleted' if applied else 'would delete'}")
    return n_del


def run(args: argparse.Namespace) -> int:
    from bestckpt.cli import fail
    from bestckpt.errors import BestckptError
    from bestckpt.tracking import settings
    from bestckpt.tracking.tracker import BestCheckpointTracker

    directory: Path = args.checkpoint_dir
    if not directory.is_dir():
        return fail(f"{directory} is not a directory; pass the checkpoint directory of a run")
    try:
        overrides = config_overrides(args)
        # A read-only preview under the options given: it writes nothing at all (not even the state).
        preview = BestCheckpointTracker.open(directory, is_writer=False, reconfigure=True, **overrides)
        changes = settings.differences(preview.stored_config, {n: getattr(preview.config, n) for n in overrides})
        listed = "; ".join(str(c) for c in changes)
        if args.dry_run or (changes and not (args.reconfigure and args.yes)):
            n_del = _print_plan(preview.plan(), applied=False)
            if args.dry_run:
                if changes:
                    print(f"preview with {listed}; to apply: the same options with --reconfigure --yes")
                return 0
            if not args.reconfigure:
                return fail(f"{directory} is tracked with other settings ({listed}); every process sharing the "
                            "directory uses them and the plan above shows what changing them would delete. Pass "
                            "--reconfigure to change them (with --yes to delete), or omit these options")
            return fail(f"nothing deleted: --reconfigure changes {listed} and would delete {n_del} checkpoint(s) "
                        "(the plan above); rerun with --yes to store the new settings and delete them")
        tracker = BestCheckpointTracker.open(directory, is_writer=True, dry_run=False, reconfigure=bool(changes),
                                             **overrides)
        decisions = tracker.prune(dry_run=False)
    except (BestckptError, ValueError, TypeError) as exc:
        return fail(str(exc))
    _print_plan(decisions, applied=True)
    return 0
