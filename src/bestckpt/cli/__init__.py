"""The `bestckpt` command line. The CLI owns the terminal; the library only logs.

Each subcommand lives in its own module exposing `add_parser(subparsers)` (which registers
the subcommand and sets `func`) so that commands stay small and independent.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("status", "prune", "release", "evaluate", "watch", "demo", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bestckpt",
        description="Keep the best checkpoints of a text-to-image training run while it trains.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bestckpt.cli.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name == f"bestckpt.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, markup=False, rich_tracebacks=False)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
