"""`bestckpt export CKPT_DIR --sink mlflow [--sink-option mlflow.tracking_uri=URI ...]`: replay a run's records.

Sends every recorded evaluation (scores at their training steps, intervals, protocol id, weights, the
evaluation images from evaluation_samples/), the best checkpoint pointer, the summary and
best_checkpoint_results.json to the chosen sinks: the same content live logging sends. For a tracker
service that was down during training, or a sink added afterwards. Nothing in the run is changed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bestckpt.sinks.options import add_sink_options, sink_spec

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="replay a run's evaluations into MLflow / W&B / TensorBoard",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir", type=Path, help="the run's checkpoint directory")
    p.add_argument("--samples-dir", type=Path,
                   help="where the evaluation images are (default: CKPT_DIR/../evaluation_samples)")
    add_sink_options(p, required=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from bestckpt.cli import fail
    from bestckpt.sinks.export import export_run

    try:
        spec = sink_spec(args)
        result = export_run(args.checkpoint_dir, spec, samples_dir=args.samples_dir)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    print(f"exported {result.evaluations} evaluation(s) ({result.failed} failed) to {', '.join(spec.names)}",
          file=sys.stderr)
    for name, error in result.sink_errors.items():
        print(f"the {name} sink failed: {error}", file=sys.stderr)
    return 1 if result.sink_errors else 0
