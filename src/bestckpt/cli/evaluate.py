"""`bestckpt evaluate CKPT_DIR --protocol P --sampler module:factory [--steps ...]`: score existing
checkpoints of a run (offline re-ranking) and record the scores in the directory's tracker.

Checkpoints already scored under the same protocol (same hash) are skipped unless --force; those
scored under another protocol are re-scored, so the ranking only ever compares like with like.

On several GPUs: `torchrun --nproc_per_node 8 -m bestckpt evaluate CKPT_DIR ... --device cuda`: every rank
evaluates the same checkpoints, each its share of the samples; global rank 0 records and prints.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt.cli.distributed import add_distributed_options, broadcast, in_turn, is_main, run_command
from bestckpt.cli.prune import add_config_options, config_overrides
from bestckpt.sinks.options import add_sink_options, sink_spec

if TYPE_CHECKING:
    from bestckpt.evaluation.distributed import DistContext
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.runners import Evaluator
    from bestckpt.tracking.tracker import BestCheckpointTracker

__all__ = ["add_evaluation_options", "add_parser", "build_evaluator", "check_settings", "evaluate_all",
           "evaluator_class", "missing_metrics_extra", "open_tracker", "plan", "prepare", "run"]


def add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `watch`."""
    p.add_argument("checkpoint_dir", type=Path, help="the run's checkpoint directory")
    p.add_argument("--protocol", type=Path, required=True, help="evaluation protocol JSON (prompts, seeds, metrics...)")
    p.add_argument("--sampler", required=True, metavar="MODULE:FACTORY",
                   help="sampler factory, e.g. my_project.sampling:make_sampler (factory() returns the sampler)")
    p.add_argument("--scorer", metavar="MODULE:FACTORY",
                   help="custom scorer factory (default: the protocol's backbones and metrics)")
    p.add_argument("--device",
                   help="device for sampling and metrics, e.g. cuda:1 (default: cuda:0 if available, else cpu)")
    p.add_argument("--samples-dir", type=Path,
                   help="where evaluation_samples go (default: CKPT_DIR/../evaluation_samples)")
    p.add_argument("--tensorboard-dir", type=Path, help="write Evaluation/* scalars to this TensorBoard log dir")
    add_sink_options(p)
    p.add_argument("--weights-dir", type=Path, help="folder with backbone weight files (default: standard caches)")
    p.add_argument("--cache-dir", type=Path, help="reference statistics cache (default: the scorer's)")
    p.add_argument("--batch-size", type=int, default=16, help="images per sampler call (default: 16)")
    add_config_options(p)


def open_tracker(args: argparse.Namespace, *, is_writer: bool = True) -> BestCheckpointTracker:
    """The run's tracker; under torchrun only global rank 0 is the writer (``is_writer``)."""
    from bestckpt.tracking.tracker import BestCheckpointTracker

    return BestCheckpointTracker.open(args.checkpoint_dir, is_writer=is_writer, **config_overrides(args))


def build_evaluator(args: argparse.Namespace, dist: DistContext | None = None) -> tuple[Protocol, Evaluator]:
    """``(protocol, Evaluator)`` from the command line (``dist``: the ranks under torchrun, which share each
    evaluation); raises ValueError with a clear message."""
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.evaluation.sampler import load_factory, load_sampler

    protocol = Protocol.from_file(args.protocol)
    sampler = load_sampler(args.sampler)
    scorer = load_factory(args.scorer) if args.scorer else None
    samples_dir = args.samples_dir or (args.checkpoint_dir.resolve().parent / "evaluation_samples")
    evaluator = evaluator_class(dist)(protocol, sampler, scorer=scorer, device=args.device, samples_dir=samples_dir,
                          tensorboard_dir=args.tensorboard_dir, weights_dir=args.weights_dir,
                          cache_dir=args.cache_dir, dist=dist, batch_size=args.batch_size,
                          sinks=sink_spec(args))
    return protocol, evaluator


def evaluator_class(dist: DistContext | None) -> type[Evaluator]:
    """:class:`~bestckpt.runners.Evaluator`, or under torchrun its lockstep form (a lost collective stops every rank
    instead of being recorded as the checkpoint's failure)."""
    if dist is None:
        from bestckpt.runners import Evaluator

        return Evaluator
    from bestckpt.cli.lockstep import LockstepEvaluator

    return LockstepEvaluator


#: what evaluating needs from the ``metrics`` extra before anything else is loaded
_EXTRA_MODULES = ("numpy", "torch", "PIL")
_EXTRA_HINT = "pip install 'bestckpt[metrics]'"


def missing_metrics_extra() -> str | None:
    """Why the metrics extra is unusable (a module fails to import), or ``None`` if it is installed."""
    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} cannot be imported ({exc})"
    return None


def check_settings(args: argparse.Namespace) -> None:
    """Refuse, before loading anything heavy, options that contradict the run's stored settings
    (:class:`~bestckpt.errors.ConfigError`; the run is changed on purpose with ``bestckpt prune --reconfigure``)."""
    overrides = config_overrides(args)
    if overrides:
        from bestckpt.tracking.tracker import BestCheckpointTracker

        BestCheckpointTracker.open(args.checkpoint_dir, is_writer=False, **overrides)


def prepare(args: argparse.Namespace, dist: DistContext | None = None) -> tuple[
        Protocol, Evaluator, BestCheckpointTracker] | None:
    """(protocol, evaluator, tracker) for `evaluate` and `watch`; None after printing why not. ``dist``: the ranks
    under torchrun (only global rank 0 writes the bookkeeping)."""
    from bestckpt.cli import fail

    if not args.checkpoint_dir.is_dir():
        fail(f"{args.checkpoint_dir} is not a directory; pass the checkpoint directory of a run")
        return None
    check_settings(args)
    missing = missing_metrics_extra()
    if missing is not None:
        fail(f"bestckpt {args.command} needs the metrics extra: {missing}; install it with {_EXTRA_HINT}")
        return None
    try:
        protocol, evaluator = build_evaluator(args, dist)
        tracker = open_tracker(args, is_writer=is_main(dist))
    except ImportError as exc:
        fail(f"bestckpt {args.command} could not import what it needs ({exc}); install the metrics extra "
             f"with {_EXTRA_HINT}")
        return None
    except (ValueError, TypeError, OSError) as exc:
        fail(str(exc))
        return None
    return protocol, evaluator, tracker


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="score existing checkpoints and update the ranking",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluation_options(p)
    p.add_argument("--steps", type=int, nargs="+", metavar="STEP", help="only these steps (default: all complete ones)")
    p.add_argument("--force", action="store_true", help="re-score checkpoints already scored under this protocol")
    add_distributed_options(p)
    p.set_defaults(func=run)
    return p


#: one checkpoint to evaluate: (step, path, its record or None when no tracker registered it)
_Todo = tuple[int, Path, Any]


def plan(args: argparse.Namespace, tracker: BestCheckpointTracker, protocol: Protocol) -> tuple[
        list[_Todo], str | None]:
    """The checkpoints to evaluate, and the error that stops the command (``None``: none); prints what it skips."""
    from bestckpt.tracking.layout import find_checkpoints

    records = {r.step: r for r in tracker.records if not r.pruned}
    found = find_checkpoints(args.checkpoint_dir, tracker.config.step_from_name)
    wanted = set(args.steps) if args.steps else None
    todo: list[_Todo] = []
    for step, path, complete in found:
        if wanted is not None and step not in wanted:
            continue
        if not complete:
            print(f"skipping step {step}: {path.name} is not complete yet", file=sys.stderr)
            continue
        rec = records.get(step)
        if (not args.force and rec is not None and rec.status == "evaluated"
                and rec.protocol_hash == protocol.hash):
            continue
        todo.append((step, path, rec))
    missing = sorted(wanted - {s for s, _, _ in found}) if wanted is not None else []
    if missing:
        return todo, (f"no checkpoint for step(s) {missing} in {args.checkpoint_dir}; pick steps from "
                      f"bestckpt status {args.checkpoint_dir}")
    return todo, None


def run(args: argparse.Namespace) -> int:
    """`bestckpt evaluate`: one process, or every rank under torchrun."""
    return run_command(args, _evaluate)


def _evaluate(args: argparse.Namespace, ctx: DistContext | None) -> int:
    """The command on one rank (``ctx``: the ranks under torchrun, else None): rank 0 decides what to evaluate."""
    prepared = in_turn(ctx, lambda: prepare(args, ctx))
    if prepared is None:
        return 2
    protocol, evaluator, tracker = prepared
    todo, error = broadcast(plan(args, tracker, protocol) if is_main(ctx) else ([], None), ctx)
    if error is not None:
        from bestckpt.cli import fail

        return fail(error) if is_main(ctx) else 2
    failed = evaluate_all(todo, evaluator, tracker, show=is_main(ctx))
    if is_main(ctx):
        tracker.log_summary()
        print(f"{len(todo)} checkpoint(s) evaluated under protocol {protocol.short_hash}, {failed} failed")
    return 1 if failed else 0


def evaluate_all(todo: list[_Todo], evaluator: Evaluator, tracker: BestCheckpointTracker, *, show: bool) -> int:
    """Evaluate and record ``todo`` in order (a progress bar when ``show``); how many failed. Ctrl-C included, the
    results file and the sinks' end of the run are written (what is left stays pending)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    failed = 0
    try:
        with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), disable=not show) as progress:
            task = progress.add_task("", total=len(todo))
            for step, path, rec in todo:
                progress.update(task, description=f"step {step}")
                if rec is None and tracker.is_writer:
                    tracker.checkpoint_saved(step, str(path), evaluate=True)
                result = evaluator.evaluate_and_record(tracker, step, path, None if rec is None else rec.epoch)
                failed += 0 if result.ok else 1
                progress.advance(task)
    finally:
        tracker.write_results()
        evaluator.finish(tracker)
        evaluator.close()
    return failed
