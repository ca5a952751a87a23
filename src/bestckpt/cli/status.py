"""`bestckpt status DIR`: the tracker's state as a table (``--json`` for machines). Read-only.

Columns: step, epoch, status, the tracked score, the other metrics, ``★`` on the best (what
``best.pt`` points at), and what retention does with it (kept + reasons, ``delete`` + reason, or
``pruned`` for history). Pruned records are hidden unless ``--all``. A checkpoint pending evaluation
for longer than the run's ``pending_stale_after`` shows as ``pending (stale, 3.2 d)``: it stays
protected until it is scored or released (``bestckpt release DIR STEP``). ``--json`` gives every
pending row its age (``pending_age_s``) and a ``stale`` flag.

A score the evaluation stored a confidence interval for shows it: ``0.6123 [0.601, 0.624]`` (95% bootstrap
interval over the evaluation's prompts and seeds; ``--json``: ``interval`` of the tracked metric, and every
metric's under ``info.intervals``). Scores whose intervals overlap are not reliably ranked by that evaluation.

After ``bestckpt finalize`` a last line gives its decision (``--json``: ``finalize``, the ``finalize.json``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bestckpt import fsio
from bestckpt.tracking import bestlink, layout, pending
from bestckpt.tracking.console import format_metrics, format_score

__all__ = ["add_parser", "run", "collect"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="show tracked checkpoints, scores, the best and what is kept",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir", type=Path, help="the checkpoint directory (holds best_checkpoints.json)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.add_argument("--all", action="store_true", help="also list pruned checkpoints (the run's history)")
    p.set_defaults(func=run)
    return p


def collect(checkpoint_dir: Path) -> dict[str, Any]:
    """Everything `status` shows, as a JSON-ready dict (read-only: nothing is written)."""
    from bestckpt.runners.finalize import read_decision
    from bestckpt.tracking.tracker import BestCheckpointTracker

    tracker = BestCheckpointTracker.open(checkpoint_dir, is_writer=False)
    summary = tracker.summary()
    decisions = {d.step: d for d in tracker.plan()}
    best = summary["best_step"]
    now, stale_after = time.time(), tracker.config.pending_stale_after
    rows = []
    for rec in tracker.records:
        row = rec.to_json()
        row["best"] = rec.step == best
        row["score"] = rec.score(tracker.metric_name)
        row["interval"] = stored_interval(rec.info, tracker.metric_name)
        row["pending_age_s"] = pending.pending_age(rec, now)
        row["stale"] = pending.is_stale(rec, stale_after, now)
        d = decisions.get(rec.step)
        if rec.pruned:
            row["fate"], row["reasons"] = "pruned", [rec.info.get("removed", "deleted by retention")]
        elif d is None:
            row["fate"], row["reasons"] = "ignored", ["path outside the checkpoint directory (refused)"]
        else:
            row["fate"], row["reasons"] = ("keep" if d.keep else "delete"), list(d.reasons)
        rows.append(row)
    return {
        "checkpoint_dir": str(checkpoint_dir),
        "summary": summary,
        "best_link": bestlink.read_pointer(Path(checkpoint_dir) / layout.BEST_LINK),
        "records": rows,
        "finalize": read_decision(checkpoint_dir),
    }


def stored_interval(info: dict[str, Any], metric: str) -> list[float] | None:
    """``[lo, hi]`` of ``metric`` from a record's ``info["intervals"]``, or None (older records have none)."""
    raw = info.get("intervals")
    pair = raw.get(metric) if isinstance(raw, dict) else None
    if (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
            and pair[0] <= pair[1]):
        return [float(pair[0]), float(pair[1])]
    return None


def _with_interval(value: Any, interval: list[float] | None) -> str:
    text = format_score(value)
    return text if interval is None or value is None else f"{text} [{interval[0]:.4g}, {interval[1]:.4g}]"


def run(args: argparse.Namespace) -> int:
    directory: Path = args.checkpoint_dir
    if not directory.is_dir():
        from bestckpt.cli import fail

        return fail(f"{directory} is not a directory; pass the checkpoint directory of a run")
    data = collect(directory)
    if args.json:
        print(fsio.to_strict_json(data, indent=2))
        return 0
    _print_table(data, show_all=args.all)
    return 0


def _print_table(data: dict[str, Any], *, show_all: bool) -> None:
    from rich.console import Console
    from rich.markup import escape  # error texts and paths are data, not markup (gloo's contain "[/...]")
    from rich.table import Table

    summary = data["summary"]
    direction = "higher is better" if summary["higher_is_better"] else "lower is better"
    table = Table(title=escape(f"{data['checkpoint_dir']} — tracking {summary['metric_name']} ({direction})"))
    for col in ("", "step", "epoch", "status", summary["metric_name"], "other metrics", "fate", "why"):
        table.add_column(col, overflow="fold")
    for row in data["records"]:
        if row.get("pruned") and not show_all:
            continue
        others = {k: v for k, v in row["metrics"].items() if k != summary["metric_name"]}
        tracked = row["metrics"].get(summary["metric_name"])
        fate_style = {"keep": "green", "delete": "red", "pruned": "dim", "ignored": "yellow"}[row["fate"]]
        table.add_row(
            "★" if row["best"] else "", str(row["step"]), "-" if row["epoch"] is None else str(row["epoch"]),
            _status_cell(row), _with_interval(tracked, row["interval"]), format_metrics(others),
            f"[{fate_style}]{row['fate']}[/]",
            escape("; ".join(row["reasons"] + ([f"error: {row['error']}"] if row.get("error") else []))),
        )
    console = Console()
    console.print(table)
    best = summary["best_checkpoint"]
    best_row = next((r for r in data["records"] if r["best"]), None)
    best_ci = best_row["interval"] if best_row else None
    console.print(f"best: {best or '-'} (score {_with_interval(summary['best_score'], best_ci)}); best.pt -> "
                  f"{data['best_link'] or '-'}; on disk {summary['on_disk']}, pending {len(summary['pending'])}, "
                  f"failed {len(summary['failed'])}, records {summary['records_total']}", markup=False)
    final = data.get("finalize")
    if final:
        console.print(f"finalize (protocol {str(final.get('protocol_hash'))[:12]}, {final.get('num_samples')} samples): "
                      f"{final.get('reason')}; chosen: step {final.get('chosen')}", markup=False)
    stale = [str(r["step"]) for r in data["records"] if r["stale"]]
    if stale:
        console.print(f"{len(stale)} stale pending: evaluate them, or stop protecting them with "
                      f"`bestckpt release {data['checkpoint_dir']} {' '.join(stale)}`", markup=False)


def _status_cell(row: dict[str, Any]) -> str:
    """``pending (stale, 3.2 d)`` for a stale pending row, else the status."""
    if row["stale"]:
        return f"pending (stale, {pending.format_age(row['pending_age_s'])})"
    return row["status"]
