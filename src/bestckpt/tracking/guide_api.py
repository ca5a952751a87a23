"""The guide's tracker methods, as a drop-in: :class:`GuideAPI`, mixed into ``BestCheckpointTracker``.

Code written for the guide's tracker (the HunyuanDiT fork's ``hydit/best_checkpoint_tracker.py`` and
the ``train_deepspeed.py`` that uses it) keeps running when its import becomes
``from bestckpt import BestCheckpointTracker``: the constructor takes the same arguments
(``checkpoint_dir, metric_name='composite_score', higher_is_better=True, save_top_k=3``, positional
or keyword), and these methods keep their names, arguments and return shapes:

================================  ===========================================================================
``get_best_score()``              the best checkpoint's tracked metric, or ``None``
``get_best_checkpoint_info()``    the best record as a dict (``step``, ``epoch``, ``checkpoint_path``,
                                  ``metrics``, ``timestamp``, plus ``status``...), or ``None``
``best_checkpoints``              the top-k records as such dicts, best first (the guide's attribute)
``should_save_checkpoint(m)``     whether metrics ``m`` would enter the top-k (``False`` and a warning when
                                  the tracked metric is missing or not finite)
``is_better(new, current)``       strict comparison in the metric's direction
``update_best_link()``            make ``best.pt`` point at the best (already true after every call: this
                                  repairs it if someone moved it)
``cleanup_old_checkpoints(...)``  **changed**: applies the retention policy (``prune()``), deletes nothing
                                  else, with a ``DeprecationWarning``; returns the decisions
``print_summary()``               the guide's ``=== Best Checkpoint Summary ===`` block, through ``logging``
``export_results(output_file)``   writes the results JSON (default ``best_checkpoint_results.json``) and
                                  returns the same document as a dict
================================  ===========================================================================

Differences, on purpose: ``update_checkpoint`` returns whether the checkpoint is now the **best**
(the fork returned whether it was admitted to the top-k: use :meth:`should_save_checkpoint` before
the call for that answer), and it records every evaluated checkpoint, not only the admitted ones.
The fork's ``cleanup_old_checkpoints(removed, keep_every_n=10)`` deleted whatever list it was given
(the best or the resume point included), keeping only multiples of ``keep_every_n * 1000`` steps;
here nothing outside the retention policy is ever deleted (best, newest, pinned, pending and every
``keep_every_n_steps``-th checkpoint are kept). In the results document ``summary.best_checkpoint``
is the best checkpoint's path (the fork put the whole record there; it is
:meth:`get_best_checkpoint_info`). ``checkpoint_path`` in the dicts this module returns is the
checkpoint directory joined with the stored relative path, as the guide's callers passed it.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bestckpt import fsio
from bestckpt.tracking import layout, startup
from bestckpt.tracking.results import results_document, summary_of
from bestckpt.tracking.state import HEADER_TOP, Record
from bestckpt.tracking.values import clean_metrics

if TYPE_CHECKING:
    import contextlib
    import threading

    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.policies import Decision
    from bestckpt.tracking.ranking import Ranking
    from bestckpt.tracking.state import TrackerState

__all__ = ["GuideAPI", "CLEANUP_DEPRECATION"]

logger = logging.getLogger("bestckpt.tracking.tracker")  # the guide's lines come from the tracker's logger

#: what ``cleanup_old_checkpoints`` warns (a ``DeprecationWarning``) at every call
CLEANUP_DEPRECATION = (
    "BestCheckpointTracker.cleanup_old_checkpoints() no longer deletes the checkpoints it is given: the guide's "
    "version deleted them outside the retention policy (the best or the resume point included). It now applies "
    "the retention policy, like tracker.prune(): the best, the newest, pinned and pending checkpoints and every "
    "keep_every_n_steps-th one are kept, and keep_every_n is ignored. Call tracker.prune() instead; the tracker "
    "already prunes after every call"
)


class GuideAPI:
    """The guide's method names on top of the tracker's own API (see the module docstring)."""

    if TYPE_CHECKING:  # provided by BestCheckpointTracker
        config: TrackerConfig
        dir: Path
        is_writer: bool
        _st: TrackerState
        _rank: Ranking
        _tlock: threading.RLock

        def _locked(self) -> contextlib.AbstractContextManager[None]: ...
        def _load(self) -> None: ...
        def _refresh(self) -> None: ...
        def prune(self, dry_run: bool | None = None) -> list[Decision]: ...
        def log_summary(self) -> None: ...

    # ------------------------------------------------------------------ the guide's attributes
    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint directory (the guide's attribute)."""
        return self.dir

    @property
    def tracker_file(self) -> Path:
        """``best_checkpoints.json`` (the guide's attribute; read it with ``bestckpt status --json``)."""
        return self.dir / layout.STATE_FILE

    @property
    def best_checkpoints(self) -> list[dict[str, Any]]:
        """The top-k records, best first, as :meth:`get_best_checkpoint_info` dicts (a fresh copy)."""
        with self._tlock:
            self._refresh()
            return [self._info(r) for r in self._rank.head()]

    def _info(self, rec: Record) -> dict[str, Any]:
        out = rec.to_json()
        out["checkpoint_path"] = str(self.dir / rec.path)
        return out

    # ------------------------------------------------------------------ queries
    def get_best_score(self) -> float | None:
        """The best checkpoint's value of the tracked metric, or ``None`` while nothing is ranked."""
        with self._tlock:
            self._refresh()
            step = self._rank.best_step()
            return None if step is None else self._st.records[step].score(self.config.metric_name)

    def get_best_checkpoint_info(self) -> dict[str, Any] | None:
        """The best checkpoint's record as a dict (``step``, ``epoch``, ``checkpoint_path``, ``metrics``,
        ``timestamp``, ...), or ``None`` while nothing is ranked."""
        with self._tlock:
            self._refresh()
            step = self._rank.best_step()
            return None if step is None else self._info(self._st.records[step])

    def is_better(self, new_score: float, current_best: float) -> bool:
        """Whether ``new_score`` is strictly better than ``current_best`` in the metric's direction."""
        return new_score > current_best if self.config.higher_is_better else new_score < current_best

    def should_save_checkpoint(self, metrics: Mapping[str, Any]) -> bool:
        """Whether a checkpoint scoring ``metrics`` would enter the top-k (the fork's meaning of
        ``update_checkpoint``'s answer). Records nothing. ``False``, with a warning, when the tracked
        metric is missing, not a number or not finite."""
        name = self.config.metric_name
        clean, error = clean_metrics(metrics, name)
        if error is not None:
            logger.warning("Metric '%s' not usable in metrics (%s): should_save_checkpoint says False", name, error)
            return False
        score = clean[name]
        assert score is not None  # no error: a finite number
        k = self.config.save_top_k
        with self._tlock:
            self._refresh()
            head = self._rank.head()
        if k < 0 or len(head) < k:
            return True
        worst = head[-1].score(name)
        return worst is None or self.is_better(score, worst)

    # ------------------------------------------------------------------ files
    def update_best_link(self) -> None:
        """Point ``best.pt`` at the best checkpoint (every call already does; this repairs a link moved
        by hand). Only the writer writes; elsewhere a no-op."""
        if not self.is_writer:
            return
        with self._locked():
            self._load()
            startup.repair_best_link(self._st, self._rank)

    def cleanup_old_checkpoints(self, removed_checkpoints: Iterable[Any] | None = None,
                                keep_every_n: int = 10) -> list[Decision]:
        """Deprecated: apply the retention policy (:meth:`prune`) and return its decisions.

        The guide's version deleted every checkpoint in ``removed_checkpoints`` except multiples of
        ``keep_every_n * 1000`` steps, outside any retention policy. Here the checkpoints it names are
        deleted only if the policy drops them (each one the policy keeps is logged with its reasons);
        ``keep_every_n`` is ignored (``keep_every_n_steps`` decides). Warns ``DeprecationWarning``.
        """
        warnings.warn(CLEANUP_DEPRECATION, DeprecationWarning, stacklevel=2)
        decisions = self.prune()
        asked = {_named_path(self.dir, c) for c in removed_checkpoints or ()} - {None}
        for d in decisions:
            if d.keep and d.path in asked:
                logger.info("cleanup_old_checkpoints: kept %s (%s)", d.path, "; ".join(d.reasons))
        return decisions

    def print_summary(self) -> None:
        """Log the guide's ``=== Best Checkpoint Summary ===`` block (one log record, never ``print``)."""
        self.log_summary()

    def export_results(self, output_file: str | Path | None = None) -> dict[str, Any]:
        """Write the results document to ``output_file`` (default: ``best_checkpoint_results.json`` in
        the checkpoint directory) and return it as a dict (the guide's keys ``tracker_config``,
        ``best_checkpoints``, ``summary``; ours after them, :mod:`~bestckpt.tracking.results`).

        The default file is written by the writer only (another rank just gets the dict); an explicit
        ``output_file`` is written by whoever asks, atomically, but never over one of bestckpt's own files.
        """
        target = self.dir / layout.RESULTS_FILE if output_file is None else Path(output_file)
        if output_file is not None and target.name != layout.RESULTS_FILE and _inside(self.dir, target) \
                and layout.own_file(target.name) is not None:
            raise ValueError(f"export_results(output_file={str(output_file)!r}) would overwrite {target.name!r}, one of "
                             "the files bestckpt keeps in the checkpoint directory; choose another file name")
        write = output_file is not None or self.is_writer
        with (self._locked() if self.is_writer else self._tlock):
            self._load()
            summary = summary_of(self._st, self._rank, self.config, HEADER_TOP)
            doc = results_document(summary, self.config.to_dict(), time.time())
            if write:
                fsio.atomic_write_text(target, fsio.to_strict_json(doc, indent=2) + "\n", durable=False)
        if write:
            logger.info("Results exported to %s", target)
        return doc


def _inside(root: Path, target: Path) -> bool:
    try:
        return target.resolve().parent == root.resolve()
    except OSError:
        return False


def _named_path(root: Path, item: Any) -> str | None:
    """The checkpoint path (relative to ``root``) a guide-style record dict, or a path, names."""
    raw = item.get("checkpoint_path") if isinstance(item, Mapping) else item
    if not isinstance(raw, (str, Path)):
        return None
    return layout.legacy_relpath(root, str(raw))
