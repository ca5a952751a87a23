"""The `bestckpt` command line. The CLI owns the terminal; the library only logs.

Each subcommand lives in its own module exposing `add_parser(subparsers)` (which registers
the subcommand and sets `func`) so that commands stay small and independent.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from bestckpt.errors import BestckptError

__all__ = ["COMMANDS", "build_parser", "fail", "main", "setup_logging"]

COMMANDS = ("status", "prune", "release", "evaluate", "watch", "finalize", "demo", "report", "export")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def fail(message: str) -> int:
    """Print ``bestckpt: error: <message>`` as one line on stderr and return the exit code 2."""
    print("bestckpt: error: " + " ".join(str(message).splitlines()), file=sys.stderr)
    return 2


def _describe_os_error(exc: OSError) -> str:
    """An OSError as a message with the fix (the bare OS text names neither)."""
    if exc.errno == errno.ELOOP and exc.filename:
        return (f"{exc.filename} is a symlink where bestckpt keeps its own file, and bestckpt does not follow it; "
                "remove it (bestckpt creates it again)")
    if exc.filename and str(exc).startswith("[Errno"):
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{exc.strerror}: {where}; check the path, its permissions and the free space"
    return str(exc)


def _log_level(value: str) -> str:
    if value.upper() not in _LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r}; use one of {', '.join(_LEVELS)}")
    return value.upper()


def build_parser() -> argparse.ArgumentParser:
    """The ``bestckpt`` parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="bestckpt",
        description="Keep the best checkpoints of a text-to-image training run while it trains.",
    )
    parser.add_argument("--log-level", default="INFO", type=_log_level,
                        help=f"logging level: {', '.join(_LEVELS)} (default: INFO)")
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
    """Log through rich to the terminal at ``level`` (the CLI owns the terminal)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, markup=False, rich_tracebacks=False)],
    )


def main(argv: list[str] | None = None) -> int:
    """Run one command. Ordinary failures (bestckpt's own errors, OSError) are one line on stderr with
    exit code 2, never a traceback; Ctrl-C is exit code 130."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(args.log_level)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bestckpt: interrupted", file=sys.stderr)
        return 130
    except BestckptError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(_describe_os_error(exc))


if __name__ == "__main__":
    raise SystemExit(main())
