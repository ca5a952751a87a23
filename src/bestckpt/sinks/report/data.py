"""What the report shows, read (read-only) from a run directory: the tracker's state and keep reasons,
the protocol JSON naming the reference images, and the per-step evaluation sample folders.

The tracker state is read through the tracker's own reader (:func:`bestckpt.tracking.journal.read_state`:
the snapshot with its journal applied), so a large run whose recent transactions live only in
``best_checkpoints.journal`` is reported as it is now, not as of its last snapshot.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bestckpt.errors import ReportError
from bestckpt.fsio import float_from_json
from bestckpt.tracking.journal import read_state
from bestckpt.tracking.layout import STATE_FILE

__all__ = ["METRIC_ORDER", "RunData", "find_checkpoint_dir", "interval_of", "load_run", "reference_paths"]

logger = logging.getLogger("bestckpt.sinks.report")  # the report's one logger, whichever module logs

METRIC_ORDER = ("composite_score", "clip_score", "fid", "kid", "lpips", "inception_score")

Protocol = tuple[dict[str, Any], Path]  # the protocol JSON and the folder it was read from


@dataclass(frozen=True)
class RunData:
    """Everything one report is drawn from.

    records: one dict per checkpoint the tracker knows, by step (keys ``step epoch path status pruned
    metrics error info protocol_hash reasons``; ``reasons``: why an on-disk checkpoint is kept).
    step_dirs: evaluated step -> its folder of evaluation samples.
    """

    run_dir: Path
    samples_dir: Path
    metric_name: str
    higher_is_better: bool
    save_top_k: Any
    best_step: int | None
    records: list[dict[str, Any]]
    protocol: Protocol | None
    step_dirs: dict[int, Path]

    @property
    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.records if r["step"] == self.best_step), None)

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "evaluated"]

    @property
    def x_range(self) -> tuple[int, int]:
        steps = [r["step"] for r in self.records] or [0]
        return (min(0, min(steps)), max(steps))

    def metric_names(self) -> list[str]:
        """Metrics with a value somewhere: the known ones in a fixed order, then the others by name."""
        evaluated = self.evaluated
        names = [m for m in METRIC_ORDER if any(r["metrics"].get(m) is not None for r in evaluated)]
        # other metrics too (a user's custom ones), but not the spreads ("kid_std"): they are not scores
        names += sorted({k for r in evaluated for k, v in r["metrics"].items()
                         if v is not None and not k.endswith("_std")} - set(names))
        return names

    def points(self, metric: str) -> list[tuple[int, float]]:
        """(step, value) of every evaluated checkpoint with a finite value of ``metric``."""
        return [(r["step"], float(r["metrics"][metric])) for r in self.evaluated
                if r["metrics"].get(metric) is not None and math.isfinite(r["metrics"][metric])]

    @property
    def has_intervals(self) -> bool:
        return any(interval_of(r, m) is not None for r in self.evaluated for m in r["metrics"])


def interval_of(record: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The (lo, hi) confidence interval the evaluation stored for ``metric`` (``info["intervals"]``), if any.

    Records of older runs have none; a malformed entry is ignored (the report never invents bounds)."""
    raw = (record.get("info") or {}).get("intervals")
    pair = raw.get(metric) if isinstance(raw, dict) else None
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return None
    try:
        lo, hi = float(pair[0]), float(pair[1])
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo <= hi else None


def find_checkpoint_dir(run_dir: Path) -> Path:
    """``RUN_DIR/checkpoints`` if it holds tracker state, else RUN_DIR itself if it does."""
    for cand in (run_dir / "checkpoints", run_dir):
        if (cand / STATE_FILE).is_file():
            return cand
    raise ReportError(
        f"no {STATE_FILE} in {run_dir} or {run_dir / 'checkpoints'}; pass the experiment directory of a "
        "run tracked by bestckpt (or --checkpoint-dir)"
    )


def load_run(run_dir: Path, ckpt_dir: Path, samples_dir: Path, protocol_file: Path | None) -> RunData:
    """Read a run for the report; :class:`ReportError` if its tracker state is missing or unreadable."""
    state = _load_state(ckpt_dir)
    records = _records(state)
    _retention_reasons(ckpt_dir, records)
    return RunData(
        run_dir=run_dir, samples_dir=samples_dir, metric_name=state.get("metric_name", "composite_score"),
        higher_is_better=state.get("higher_is_better", True), save_top_k=state.get("save_top_k"),
        best_step=state.get("best_step"), records=records, protocol=_load_protocol(run_dir, protocol_file),
        step_dirs=_sample_steps(samples_dir),
    )


def _load_state(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / STATE_FILE
    try:
        state = read_state(ckpt_dir)
        if state is None:
            raise FileNotFoundError(f"no such file: {str(path)!r}")
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; is the run's tracker state intact? "
                          "(`bestckpt status` repairs and explains it)") from exc
    if not isinstance(state.get("checkpoints"), list):
        raise ReportError(f"{path} has no 'checkpoints' list; it was not written by bestckpt")
    return state


def _records(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The state's checkpoint records as the report's dicts, by step (malformed ones skipped)."""
    records = []
    for raw in state["checkpoints"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("step"), int):
            continue
        metrics = {}
        for k, v in (raw.get("metrics") or {}).items():
            try:
                metrics[str(k)] = float_from_json(v)
            except ValueError:
                metrics[str(k)] = None
        records.append({"step": raw["step"], "epoch": raw.get("epoch"), "path": raw.get("checkpoint_path", ""),
                        "status": raw.get("status", "evaluated"), "pruned": bool(raw.get("pruned", False)),
                        "metrics": metrics, "error": raw.get("error"), "info": raw.get("info") or {},
                        "protocol_hash": raw.get("protocol_hash"), "reasons": []})
    records.sort(key=lambda r: r["step"])
    return records


def _retention_reasons(ckpt_dir: Path, records: list[dict[str, Any]]) -> None:
    """Fill each on-disk record's keep reasons from the tracker's own (read-only) plan."""
    try:
        from bestckpt.tracking.tracker import BestCheckpointTracker

        plan = BestCheckpointTracker.open(ckpt_dir).plan()
    except Exception as exc:  # the report still renders; reasons are a detail
        logger.warning("could not compute retention reasons for %s: %s", ckpt_dir, exc)
        return
    by_step = {d.step: d for d in plan}
    for r in records:
        d = by_step.get(r["step"])
        if d is not None and not r["pruned"]:
            r["reasons"] = list(d.reasons)


def _load_protocol(run_dir: Path, protocol_file: Path | None) -> Protocol | None:
    """The protocol JSON (as written by ``Protocol.to_file``) and its folder, if there is one."""
    cands = [protocol_file] if protocol_file else [run_dir / "protocol" / "protocol.json", run_dir / "protocol.json"]
    for cand in cands:
        if cand is not None and cand.is_file():
            try:
                data = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable protocol file %s: %s", cand, exc)
                continue
            if isinstance(data, dict):
                return data, cand.parent
    return None


def _sample_steps(samples_dir: Path) -> dict[int, Path]:
    if not samples_dir.is_dir():
        return {}
    return {int(d.name): d for d in samples_dir.iterdir() if d.is_dir() and d.name.isdigit()}


def reference_paths(protocol: Protocol | None) -> list[Path | None]:
    """The protocol's paired reference image per prompt (relative paths resolved against its folder)."""
    if protocol is None:
        return []
    data, base = protocol
    out: list[Path | None] = []
    for r in data.get("reference_images") or []:
        if r is None:
            out.append(None)
        else:
            p = Path(r)
            out.append(p if p.is_absolute() else base / p)
    return out
