"""`bestckpt report RUN_DIR`: write the run's self-contained HTML report."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a tracked run",
        description="Write RUN_DIR/report.html: metric curves with the best marked, the kept/pruned timeline, "
                    "the progress grid and the best checkpoint's samples next to the references. One file, "
                    "images embedded, no network needed to view it.",
    )
    p.add_argument("run_dir", type=Path, help="experiment directory (holds checkpoints/ and evaluation_samples/)")
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="checkpoint directory (default: RUN_DIR/checkpoints, or RUN_DIR if it holds the state)")
    p.add_argument("--samples-dir", type=Path, default=None,
                   help="evaluation samples (default: RUN_DIR/evaluation_samples)")
    p.add_argument("--protocol", type=Path, default=None,
                   help="protocol JSON naming the reference images (default: RUN_DIR/protocol/protocol.json)")
    p.add_argument("-o", "--output", type=Path, default=None, help="output file (default: RUN_DIR/report.html)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from bestckpt.sinks.report import ReportError, write_report

    try:
        path = write_report(args.run_dir, args.output, checkpoint_dir=args.checkpoint_dir,
                            samples_dir=args.samples_dir, protocol_file=args.protocol)
    except ReportError as exc:
        from bestckpt.cli import fail

        return fail(str(exc))
    print(path)
    return 0
