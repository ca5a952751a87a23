"""Text formatting of the tracker's summary: the guide's log block, one source for library and CLI.

Pure functions over the dict returned by ``BestCheckpointTracker.summary()``; nothing here logs or
prints (the tracker logs the block, the CLI prints its own table).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["format_score", "format_metrics", "format_summary", "SUMMARY_TITLE", "SUMMARY_RULE"]

SUMMARY_TITLE = "=== Best Checkpoint Summary ==="
SUMMARY_RULE = "================================"


def format_score(value: float | None) -> str:
    """Four decimals, trailing zeros dropped down to two (``0.7245``, ``3.45``, ``12.00``); ``nan``/``inf`` as such."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.4f}"
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return text


def format_metrics(metrics: Mapping[str, float | None]) -> str:
    """``clip_score: 0.8123, lpips: 0.1234, ...`` in the order the metrics were recorded."""
    return ", ".join(f"{name}: {format_score(value)}" for name, value in metrics.items())


def format_summary(summary: Mapping[str, Any]) -> str:
    """The guide's ``=== Best Checkpoint Summary ===`` block (lines joined by newlines).

    ``summary`` needs ``metric_name``, ``save_top_k`` and ``ranking`` (records as dicts with
    ``step``, ``epoch``, ``checkpoint_path``, ``metrics``), best first.
    """
    ranking = list(summary.get("ranking", []))
    k = summary.get("save_top_k")
    lines = [
        SUMMARY_TITLE,
        f"Tracking metric: {summary['metric_name']}",
        f"Saved checkpoints: {len(ranking)}/{'all' if k == -1 else k}",
    ]
    for i, rec in enumerate(ranking, start=1):
        epoch = rec.get("epoch")
        lines.append(f"  #{i}: Step {rec['step']}, Epoch {'-' if epoch is None else epoch}")
        lines.append(f"      Path: {rec['checkpoint_path']}")
        lines.append(f"      Metrics: {format_metrics(rec.get('metrics', {}))}")
    if not ranking:
        lines.append("  No checkpoints saved yet")
    lines.append(SUMMARY_RULE)
    return "\n".join(lines)
