"""The commit step of a tracker transaction: retention, the state write, ``best.pt``, deletions.

The order makes a crash at any instant recoverable:

1. retention decides; every doomed record is marked ``pruned`` and gets a deletion intent (the
   entry's inode and mtime), and the state is written with them, plus a ``best_link`` marker when
   ``best.pt`` is about to move;
2. ``best.pt`` is swapped atomically; its old target is still on disk (nothing was deleted yet),
   so a crash before the swap leaves it on the previous best, which the next start repairs;
3. the intents are carried out (:func:`bestckpt.tracking.reconcile.finish_intents`); a crash
   mid-delete is finished by the next call.

Also here: the state header (:func:`write_state`) and the steps kept for reasons outside the
config (:func:`protected_steps`), which retention needs.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from bestckpt.tracking import bestlink, entries, finalized, layout, reconcile
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.policies import Decision, retention_policy
from bestckpt.tracking.ranking import Ranking
from bestckpt.tracking.state import HEADER_TOP, STATE_SCHEMA, TrackerState

__all__ = ["commit", "decide", "protected_steps", "check_present", "write_state", "point_best_link"]

logger = logging.getLogger(__name__)


def protected_steps(st: TrackerState, config: TrackerConfig) -> dict[int, str]:
    """Steps kept for reasons outside the config: DeepSpeed's ``latest`` tag, recovered records, finalists."""
    out: dict[int, str] = finalized.protected(st)
    tag = layout.read_latest_tag(st.dir)
    step = config.step_from_name(tag) if tag else None
    if tag and step is None:  # a tag outside the template (an epoch tag) registered by its path
        step = next((r.step for r in st.live() if r.path == tag), None)
    if step is not None:
        out[step] = "named by DeepSpeed 'latest'"
    for r in st.live():
        if r.info.get("recovered") and r.status == "saved":
            out[r.step] = "recovered after state loss (evaluate it, or delete it by hand)"
    return out


def decide(st: TrackerState, rank: Ranking, config: TrackerConfig, best_step: int | None = None) -> list[Decision]:
    """Keep/delete decision, with reasons, for every checkpoint still on disk."""
    cands = rank.candidates()
    if best_step is None:
        best_step = rank.best_step()
    policy = retention_policy(
        save_top_k=config.save_top_k, higher_is_better=config.higher_is_better, metric_name=config.metric_name,
        keep_latest=config.keep_latest, keep_every_n_steps=config.keep_every_n_steps,
        pinned_steps=config.pinned_steps, best_step=best_step, protected=protected_steps(st, config),
    )
    return policy.decide(cands)


def check_present(st: TrackerState, rank: Ranking) -> None:
    """Drop (with a warning) vanished checkpoints that best.pt could point at, and the latest save.

    Cheap (a few ``lstat`` calls): the full check of every live record runs on full reloads.
    """
    records = st.records
    newest = max(st.live_steps, key=lambda s: (records[s].seq, s), default=None)
    if newest is not None and entries.entry_stat(st.dir, st.records[newest].path) is None:
        reconcile.drop_missing(st, st.records[newest])
    while True:
        best = rank.best_step()
        if best is None or entries.entry_stat(st.dir, st.records[best].path) is not None:
            return
        reconcile.drop_missing(st, st.records[best])


def write_state(st: TrackerState, rank: Ranking, config: TrackerConfig, best_step: int | None,
                marker: dict[str, Any] | None) -> None:
    """Persist the state: a full atomic snapshot, or (large states) one journal line."""
    header: dict[str, Any] = {
        "schema": STATE_SCHEMA,
        "metric_name": config.metric_name,
        "higher_is_better": config.higher_is_better,
        "save_top_k": config.save_top_k,
        "tracker_config": config.to_dict(),
        "best_step": best_step,
        "best_checkpoint": None if best_step is None else st.records[best_step].path,
        "top_k": [r.step for r in rank.head(HEADER_TOP)],
        "best_link": marker,
        "deleting": st.intents,
        "next_seq": st.next_seq,
        "updated_at": time.time(),
    }
    st.write(header, config.to_dict())


def point_best_link(st: TrackerState, rel: str) -> None:
    """Swap ``best.pt`` to the checkpoint ``rel`` (atomic; a directory target for DeepSpeed tags)."""
    bestlink.atomic_symlink(st.dir / layout.BEST_LINK, rel, target_is_directory=(st.dir / rel).is_dir())


def commit(st: TrackerState, rank: Ranking, config: TrackerConfig, dry_run: bool) -> None:
    """Decide, write the state, swap ``best.pt``, delete what retention dropped (in that order)."""
    check_present(st, rank)
    best_step = rank.best_step()
    best_rel = None if best_step is None else st.records[best_step].path
    doomed: list[Decision] = []
    if not dry_run and rank.may_delete():  # else every candidate is top-k or pending: all kept
        doomed = [d for d in decide(st, rank, config, best_step) if not d.keep]
    for d in doomed:
        rec = st.records[d.step]
        st.put(dataclasses.replace(rec, pruned=True))
        stat = entries.entry_stat(st.dir, rec.path)
        if stat is None:
            continue
        st.intents.append({"step": rec.step, "path": rec.path, "ino": stat.st_ino, "mtime_ns": stat.st_mtime_ns})
    link = st.dir / layout.BEST_LINK
    current = bestlink.read_pointer(link)
    marker = {"from": current, "to": best_rel} if current != best_rel else None
    write_state(st, rank, config, best_step, marker)
    if best_rel is not None and current != best_rel:
        point_best_link(st, best_rel)
        logger.debug("best.pt -> %s", best_rel)
    elif best_rel is None and link.is_symlink():
        bestlink.remove_link(link)  # nothing rankable any more: a stale pointer would lie
        logger.warning("no checkpoint can be ranked any more; removed %s", link)
    reconcile.finish_intents(st)
