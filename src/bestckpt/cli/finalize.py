"""`bestckpt finalize CKPT_DIR --protocol P --sampler module:factory [--samples-factor 4 | --final-protocol F]`:
the guide's last step, "evaluate the best checkpoints further and choose".

Re-scores the finalists (the top-k, any checkpoint whose interval overlaps the best's, and the current best)
under a larger protocol (F, or P with --samples-factor times the samples: more seeds per prompt), records
those scores under the larger protocol's id, and moves best.pt only to a winner confirmed beyond noise;
otherwise the current best stays. The decision is logged and written to CKPT_DIR/finalize.json (`bestckpt
status` shows it); a finalized best is never moved back by later evaluations, only by another finalize.
Interrupted, run it again: finalists already scored are skipped. Under torchrun
(`torchrun --nproc_per_node 8 -m bestckpt finalize ... --device cuda`) the ranks share each evaluation and global
rank 0 records and prints. Details: docs/finalize.md.

`bestckpt finalize CKPT_DIR --abandon [--dry-run]`: give up an interrupted finalize that will not be rerun. Its
finalists lose their pins ("finalist (bestckpt finalize running or interrupted ...)" in `bestckpt status`) and
retention runs at once, as after `bestckpt release`; the scores it measured and an earlier finalize's choice stay.
Only when no finalize is running: a running one holds CKPT_DIR/.bestckpt-finalize.lock, and --abandon refuses.
The evaluation options are not needed with --abandon (and are ignored); it runs in one process (not under torchrun).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt.cli.distributed import add_distributed_options, in_turn, is_main, run_command, world_size
from bestckpt.cli.evaluate import (
    add_evaluation_options,
    check_settings,
    evaluator_class,
    missing_metrics_extra,
    open_tracker,
)

if TYPE_CHECKING:
    from bestckpt.evaluation.distributed import DistContext
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.runners import Evaluator
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finalize", help="re-score the best checkpoints with a larger protocol and choose",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluation_options(p)
    p.add_argument("--final-protocol", type=Path, metavar="FILE",
                   help="the larger protocol (default: --protocol with --samples-factor times the samples)")
    p.add_argument("--samples-factor", type=int, default=4,
                   help="samples of the derived larger protocol, as a multiple of --protocol's (default: 4)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="finalists from the top of the ranking (default: the run's save_top_k; -1: all)")
    p.add_argument("--abandon", action="store_true",
                   help="give up an interrupted finalize (only when none is running): release its finalists' pins "
                        "and apply retention; its scores and an earlier choice stay")
    p.add_argument("--dry-run", action="store_true", help="with --abandon: print what it would release and delete")
    for action in p._actions:  # not needed by --abandon; run() asks for them otherwise
        if action.dest in ("protocol", "sampler"):
            action.required = False
            action.help = f"{action.help} (required unless --abandon)"
    add_distributed_options(p)
    p.set_defaults(func=run)
    return p


def _prepare(args: argparse.Namespace, dist: DistContext | None) -> tuple[Protocol, Evaluator, BestCheckpointTracker] | None:
    """(the larger protocol, its evaluator, the run's tracker); None after printing why not."""
    from bestckpt.cli import fail

    if args.tensorboard_dir is not None:
        fail("finalize writes no TensorBoard scalars (its scores are not the run's training curve); drop "
             "--tensorboard-dir: the decision and the scores go to finalize.json and `bestckpt status`")
        return None
    check_settings(args)
    missing = missing_metrics_extra()
    if missing is not None:
        fail(f"bestckpt finalize needs the metrics extra: {missing}; install it with pip install 'bestckpt[metrics]'")
        return None
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.evaluation.sampler import load_factory, load_sampler
    from bestckpt.runners.finalize import derive_protocol

    try:
        if args.final_protocol is not None:
            final = Protocol.from_file(args.final_protocol)
        else:
            final = derive_protocol(Protocol.from_file(args.protocol), args.samples_factor)
        samples_dir = args.samples_dir or (args.checkpoint_dir.resolve().parent / "finalize_samples")
        make = evaluator_class(dist)
        evaluator = make(final, load_sampler(args.sampler), scorer=load_factory(args.scorer) if args.scorer else None,
                         device=args.device, samples_dir=samples_dir, tensorboard_dir=None, weights_dir=args.weights_dir,
                         cache_dir=args.cache_dir, dist=dist, batch_size=args.batch_size)
        tracker = open_tracker(args, is_writer=is_main(dist))
    except ImportError as exc:
        fail(f"bestckpt finalize could not import what it needs ({exc}); install the metrics extra")
        return None
    except (ValueError, TypeError, OSError) as exc:
        fail(str(exc))
        return None
    return final, evaluator, tracker


def run(args: argparse.Namespace) -> int:
    """`bestckpt finalize`: one process, or every rank alike under torchrun (rank 0 records and prints);
    ``--abandon``: one process."""
    from bestckpt.cli import fail

    if not args.checkpoint_dir.is_dir():
        return fail(f"{args.checkpoint_dir} is not a directory; pass the checkpoint directory of a run")
    if args.abandon:
        if world_size() > 1:
            return fail("--abandon changes only the bookkeeping and runs in one process: run it without torchrun")
        return _abandon(args)
    if args.dry_run:
        return fail("--dry-run previews --abandon only (add it); `bestckpt prune DIR --dry-run` previews retention")
    if args.protocol is None or args.sampler is None:
        return fail("finalize needs --protocol (the training protocol) and --sampler MODULE:FACTORY; or --abandon "
                    "to give up an interrupted finalize")
    return run_command(args, _finalize)


def _finalize(args: argparse.Namespace, ctx: DistContext | None) -> int:
    from bestckpt.runners.finalize import finalize

    prepared = in_turn(ctx, lambda: _prepare(args, ctx))
    if prepared is None:
        return 2
    final, evaluator, tracker = prepared
    try:
        decision = finalize(tracker, evaluator, top_k=args.top_k)
    finally:
        evaluator.close()
    unscored = [row["step"] for row in decision.finalists if row["final_score"] is None]
    if not is_main(ctx):
        return 1 if unscored else 0
    tracker.export_results()
    verdict = "best.pt moved to" if decision.moved else "best.pt stays on"
    print(f"finalize under protocol {final.short_hash} ({final.num_samples} samples): {decision.reason}; "
          f"{verdict} step {decision.chosen}")
    if unscored:
        print(f"finalist(s) {unscored} could not be scored (see the log); run finalize again once the cause is fixed",
              file=sys.stderr)
    return 1 if unscored else 0


def _abandon(args: argparse.Namespace) -> int:
    """`--abandon`: release the pins of an interrupted finalize (retention runs at once); print what happened."""
    from bestckpt.cli import fail
    from bestckpt.cli.prune import config_overrides
    from bestckpt.errors import BestckptError
    from bestckpt.tracking.finalized import final_of, running_lock
    from bestckpt.tracking.layout import STATE_FILE
    from bestckpt.tracking.tracker import BestCheckpointTracker

    directory: Path = args.checkpoint_dir
    if not (directory / STATE_FILE).exists():
        return fail(f"{directory} has no {STATE_FILE}: no checkpoint is tracked there, so there is no finalize to "
                    "abandon; pass the checkpoint directory of a run")
    try:
        reader = BestCheckpointTracker.open(directory, is_writer=False, **config_overrides(args))
        if not any(final_of(r).get("finalizing") is not None for r in reader.records if not r.pruned):
            print(f"no finalize marks in {directory}: no interrupted finalize to abandon; nothing changed")
            return 0
        if args.dry_run:
            with running_lock(directory, abandoning=True):  # refuse as the real run would
                tracker, before = reader, {r.step: r for r in reader.records if not r.pruned}
                released = reader.abandon_finalize()  # a reader changes only its memory: a preview
        else:
            tracker = open_tracker(args)
            before = {r.step: r for r in tracker.records if not r.pruned}
            released = tracker.abandon_finalize()
        plan = {d.step: d for d in tracker.plan()}
        live = {r.step for r in tracker.records if not r.pruned}
        best = tracker.best
    except (BestckptError, OSError, ValueError, TypeError) as exc:
        return fail(str(exc))
    if not released:
        print(f"no finalize marks in {directory}: no interrupted finalize to abandon; nothing changed")
        return 0
    if args.dry_run:
        gone = sorted(s for s in before if s in plan and not plan[s].keep)
    else:
        gone = sorted(s for s in before if s not in live)
    _report(released, before, gone, plan, best, args.dry_run)
    return 0


def _report(released: list[int], before: dict[int, Any], gone: list[int], plan: dict[int, Any], best: Any,
            dry_run: bool) -> None:
    """One line per released finalist (deleted, or kept and why), per other deletion, and a summary."""
    from bestckpt.tracking.finalized import final_of

    for step in released:
        why = "; ".join(plan[step].reasons) if step in plan else "not on disk"
        fate = ("deleted by retention" if step in gone else f"kept ({why})") if not dry_run else (
            "would be deleted by retention" if step in gone else f"would be kept ({why})")
        print(f"{'would release' if dry_run else 'released'} step {step} ({before[step].path}): no longer a "
              f"finalist; {fate}")
    for step in gone:
        if step not in released:
            print(f"retention {'would also delete' if dry_run else 'also deleted'} step {step} ({before[step].path})")
    scored = sum(1 for s in released if final_of(before[s]).get("scores"))
    chosen = best is not None and "chosen" in final_of(best)
    counts = (f"dry run, nothing changed: {len(released)} finalist(s) would be released, {len(gone)} checkpoint(s) "
              "would be deleted" if dry_run else f"{len(released)} finalist(s) released, {len(gone)} checkpoint(s) deleted")
    print(f"{counts}; the finalize scores of {scored} finalist(s) stay recorded; best.pt: step "
          f"{None if best is None else best.step}{' (chosen by an earlier finalize)' if chosen else ''}")
