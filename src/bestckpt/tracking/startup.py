"""What the writer does once, when a tracker opens a checkpoint directory, before any call.

- :func:`prepare_directory`: the checkpoint directory exists (created if needed) and is a directory,
  with a message naming the fix when it cannot be;
- :func:`start` (under the directory's lock): refuse a ``best.pt`` that is not ours and a directory
  where the results file goes (before anything is changed), remove the
  leftovers of interrupted writes, load and reconcile the state (rebuilt from the checkpoints on
  disk when there is none), put checkpoints saved again but never registered in the save order,
  adopt complete checkpoints newer than every recorded step as pending
  (written, but the process stopped before registering them), warn about stale pending ones,
  report the other step-named entries the state does not know (never touched),
  check a change of metric, then compact the state so that ``best_checkpoints.json`` alone is
  current again, and repair ``best.pt`` (a crash may have left it on the previous best).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from bestckpt.errors import UnsafeFileError
from bestckpt.tracking import (
    bestlink,
    commit,
    entries,
    layout,
    pending,
    reconcile,
    saveorder,
)
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.ranking import Ranking
from bestckpt.tracking.state import TrackerState

__all__ = ["prepare_directory", "start", "repair_best_link"]

logger = logging.getLogger(__name__)


def prepare_directory(directory: Path) -> None:
    """Create the checkpoint directory if needed; raise with the fix when that is impossible."""
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"checkpoint_dir {directory} exists and is not a directory; pass the directory checkpoints are saved in"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create checkpoint_dir {directory}: {exc.strerror}; "
                      "check the path and its permissions, or pass is_writer=False to only read") from exc


def start(st: TrackerState, rank: Ranking, config: TrackerConfig) -> None:
    """First load by the writer: clean leftovers, reconcile, report unknown entries, check the metric."""
    link = st.dir / layout.BEST_LINK
    if os.path.lexists(link) and not link.is_symlink():
        raise FileExistsError(
            f"{link} exists and is not a symlink; bestckpt will not overwrite it. "
            f"Move it away so that {link.name} can point at the best checkpoint."
        )
    results = st.dir / layout.RESULTS_FILE
    if results.is_dir() and not results.is_symlink():  # every call would fail after its commit
        raise UnsafeFileError(f"{results} is a directory where bestckpt writes its results file; it is not "
                              "bestckpt's: move it away and retry")
    removed = entries.cleanup_temporaries(st.dir)
    if removed:
        logger.info("removed %d leftover temporary entries in %s", len(removed), st.dir)
    reconcile.load(st, config, True)
    if (st.stamp is None or st.stamp[0] is None) and not st.records:
        reconcile.rebuild_from_disk(st, config)
    saveorder.restamp_if_copied(st)
    saveorder.order_resaves(st)
    reconcile.adopt_unregistered(st, config)
    pending.warn_stale(st, config)
    unknown = reconcile.unknown_entries(st, config)
    if unknown:
        logger.warning("%d checkpoint entries in %s are not in the state and will not be touched: %s",
                       len(unknown), st.dir, ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
    reconcile.check_metric_change(st, config)
    st.force_full = True  # every start compacts: best_checkpoints.json alone is current again
    commit.write_state(st, rank, config, rank.best_step(), None)
    repair_best_link(st, rank)


def repair_best_link(st: TrackerState, rank: Ranking) -> None:
    """Point ``best.pt`` at the best checkpoint if it points elsewhere; remove it when nothing can be
    ranked (a crash between the state write and the link's removal left it naming a non-best)."""
    best_step = rank.best_step()
    link = st.dir / layout.BEST_LINK
    if best_step is None:
        if link.is_symlink():
            bestlink.remove_link(link)
            logger.warning("no checkpoint can be ranked; removed the stale %s", link)
        return
    rel = st.records[best_step].path
    if bestlink.read_pointer(st.dir / layout.BEST_LINK) != rel:
        commit.point_best_link(st, rel)
        logger.info("best.pt now points at %s", rel)
