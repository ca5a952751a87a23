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
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bestckpt.cli.distributed import add_distributed_options, in_turn, is_main, run_command
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
    add_distributed_options(p)
    p.set_defaults(func=run)
    return p


def _prepare(args: argparse.Namespace, dist: DistContext | None) -> tuple[Protocol, Evaluator, BestCheckpointTracker] | None:
    """(the larger protocol, its evaluator, the run's tracker); None after printing why not."""
    from bestckpt.cli import fail

    if not args.checkpoint_dir.is_dir():
        fail(f"{args.checkpoint_dir} is not a directory; pass the checkpoint directory of a run")
        return None
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
        evaluator = evaluator_class(dist)(final, load_sampler(args.sampler),
                              scorer=load_factory(args.scorer) if args.scorer else None, device=args.device,
                              samples_dir=samples_dir, tensorboard_dir=None, weights_dir=args.weights_dir,
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
    """`bestckpt finalize`: one process, or every rank alike under torchrun (rank 0 records and prints)."""
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
