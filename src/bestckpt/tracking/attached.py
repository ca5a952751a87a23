"""Results measured after a checkpoint's evaluation, attached to its record: ``info["results"][name]``.

Some measurements come after the scoring and apply to one checkpoint: the demo measures the best checkpoint's
per-attribute accuracy once training ended; a user may run a held-out benchmark on the final best. Stored in
the record they travel with the run: in the summary (``summary()["results"]``: step -> name -> value), in
``best_checkpoint_results.json``, in every sink at the run's end (each numeric leaf as the scalar
``Evaluation/<name>/<key>/...`` at the checkpoint's step: :func:`result_scalars`) and in ``bestckpt export``.
They never change the ranking: only the tracked metric ranks.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from bestckpt import errors
from bestckpt.tracking.state import RESULTS_KEY, TrackerState
from bestckpt.tracking.values import check_info

__all__ = ["RESULTS", "annotate", "result_scalars", "results_of"]

#: ``info`` key of the attached results
RESULTS = RESULTS_KEY


def annotate(st: TrackerState, step: int, name: str, value: Any) -> None:
    """Attach ``value`` (JSON) as result ``name`` of ``step``'s record (replacing an earlier one of that name)."""
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise errors.ConfigError(f"result name {name!r}: use a non-empty name without '/', e.g. 'accuracy'")
    rec = st.records.get(step)
    if rec is None:
        raise errors.ConfigError(f"step {step} has no record; attach results to a checkpoint the tracker recorded "
                                 f"(recorded steps: {sorted(st.records)[-10:]})")
    checked = check_info({name: value})
    info = dict(rec.info)
    info[RESULTS] = {**dict(info.get(RESULTS) or {}), **checked}
    st.put(dataclasses.replace(rec, info=info))


def results_of(st: TrackerState) -> dict[str, dict[str, Any]]:
    """``{str(step): {name: value}}`` of the records that carry results (the summary's ``results``). Read from the
    state's index of such records: the summary is built at every write, and a long run has thousands of records."""
    return {str(step): dict(st.records[step].info[RESULTS]) for step in sorted(st.annotated)}


def result_scalars(results: Mapping[str, Mapping[str, Any]] | None) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` for every finite numeric leaf of the summary's ``results``; the tag is
    ``Evaluation/<name>/<key>/...`` (lists by index). Strings, booleans and non-finite values are not scalars."""
    out: list[tuple[int, str, float]] = []

    def walk(step: int, tag: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(step, f"{tag}/{key}", inner)
        elif isinstance(value, (list, tuple)):
            for i, inner in enumerate(value):
                walk(step, f"{tag}/{i}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out.append((step, tag, float(value)))

    for step, named in sorted((results or {}).items(), key=lambda kv: int(kv[0])):
        for name, value in named.items():
            walk(int(step), f"Evaluation/{name}", value)
    return out
