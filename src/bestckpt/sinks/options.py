"""The ``--sink NAME`` / ``--sink-option NAME.KEY=VALUE`` options shared by evaluate, watch, demo and export."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_sink_options", "sink_spec"]


def add_sink_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add ``--sink`` (repeatable: tensorboard, mlflow, wandb) and ``--sink-option`` (repeatable)."""
    p.add_argument("--sink", action="append", default=[], metavar="NAME", required=required,
                   help="also log evaluations to this sink: tensorboard, mlflow, wandb (repeatable; "
                        "docs/sinks.md)")
    p.add_argument("--sink-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="a sink setting, e.g. mlflow.tracking_uri=sqlite:///mlflow.db or mlflow.run_id=RUN_ID "
                        "(repeatable)")


def sink_spec(args: argparse.Namespace) -> Any:
    """The :class:`~bestckpt.sinks.base.SinkSpec` of the command line (ValueError on a malformed option)."""
    from bestckpt.sinks.base import SinkSpec

    return SinkSpec.from_cli(getattr(args, "sink", None), getattr(args, "sink_option", None))
