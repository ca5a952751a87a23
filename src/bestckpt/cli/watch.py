"""`bestckpt watch CKPT_DIR --protocol P --sampler module:factory`: the sidecar evaluator.

Evaluates checkpoints as they appear (on another GPU or machine), in step order, skipping none,
and records them in the directory's tracker. Only complete checkpoints are evaluated (files once
renamed into place; DeepSpeed tags when marked complete, named by `latest`, or followed by a later
tag). Resumable: a killed watcher leaves the checkpoint it was scoring pending and scores it again
on restart. SIGINT/SIGTERM stop after the current checkpoint (a second signal stops at once).
"""
from __future__ import annotations

import argparse
import sys

from bestckpt.cli.evaluate import add_evaluation_options, prepare

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("watch", help="evaluate checkpoints as they appear (sidecar)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluation_options(p)
    p.add_argument("--poll", type=float, default=5.0, help="seconds between directory scans (default: 5)")
    p.add_argument("--once", action="store_true", help="evaluate what is due now, then exit")
    p.add_argument("--idle-timeout", type=float, help="exit after this many seconds without a new checkpoint")
    p.add_argument("--adopt-after", type=float, default=60.0,
                   help="evaluate checkpoints no tracker registered once they are this old, in seconds "
                        "(default: 60; 0 for trainers that do not use a tracker; -1 never)")
    p.add_argument("--on-protocol-change", choices=("refuse", "rescore"), default="refuse",
                   help="checkpoints scored under another protocol: refuse to start (default) or re-score them")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from bestckpt.runners import SidecarWatcher

    prepared = prepare(args)
    if prepared is None:
        return 2
    protocol, evaluator, tracker = prepared
    from bestckpt.runners import ProtocolChangedError

    adopt = None if args.adopt_after is not None and args.adopt_after < 0 else args.adopt_after
    try:
        watcher = SidecarWatcher(tracker, evaluator, poll_interval=args.poll, adopt_after=adopt,
                                 on_protocol_change=args.on_protocol_change)
    except ProtocolChangedError as exc:
        from bestckpt.cli import fail

        return fail(str(exc))
    def ready() -> None:
        print(f"watching {args.checkpoint_dir} (protocol {protocol.short_hash}); Ctrl-C to stop", file=sys.stderr)

    n = watcher.run(once=args.once, idle_timeout=args.idle_timeout, on_ready=ready)
    tracker.write_results()
    print(f"evaluated {n} checkpoint(s)", file=sys.stderr)
    return 0
