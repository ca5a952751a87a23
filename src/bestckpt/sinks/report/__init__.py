"""A self-contained static HTML report of a tracked run (``bestckpt report RUN_DIR``).

One file, no network, no JavaScript: plots are inline SVG, images are embedded as ``data:`` URIs,
so the page can be mailed or archived and still shows everything. Sections:

1. metric curves over steps (one small plot per metric, the best checkpoint marked, the metric's
   direction stated);
2. the kept/pruned timeline: every checkpoint the tracker knows, on disk or pruned, with the
   retention reasons of those kept (top-k, best, latest, every-N steps, pending evaluation);
3. the progress grid: the same prompts with the same initial noise at every evaluated step;
4. the best checkpoint's samples next to their reference images.

Inputs are the files the tracker and the evaluation pipeline write (read-only): the tracker state
in ``CKPT_DIR`` (``best_checkpoints.json`` and its journal, read by the tracker's reader),
``RUN_DIR/evaluation_samples/{step:07d}/`` and, where present, the protocol JSON naming the
reference images. :mod:`.data` reads them, :mod:`.sections` draws each section, :mod:`.svg` the plots.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bestckpt.errors import ReportError
from bestckpt.fsio import atomic_write_text
from bestckpt.sinks.report import learned, sections
from bestckpt.sinks.report.data import find_checkpoint_dir, load_run

__all__ = ["ReportError", "find_checkpoint_dir", "render_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def render_report(run_dir: str | Path, *, checkpoint_dir: str | Path | None = None,
                  samples_dir: str | Path | None = None, protocol_file: str | Path | None = None,
                  max_prompts: int = 8, max_steps: int = 12, max_pairs: int = 20) -> str:
    """The report as one HTML string (see the module docstring for what it shows)."""
    run = Path(run_dir)
    data = load_run(run, Path(checkpoint_dir) if checkpoint_dir else find_checkpoint_dir(run),
                    Path(samples_dir) if samples_dir else run / "evaluation_samples",
                    Path(protocol_file) if protocol_file else None)
    names = data.metric_names()  # the plotted metrics are the table's columns
    return "".join([
        sections.header(data),
        sections.metric_curves(data, names),
        sections.checkpoints(data, names),
        learned.accuracy(data),
        learned.composite_shares(data),
        sections.progress_grid(data, max_prompts, max_steps),
        sections.best_samples(data, max_pairs),
        "</body></html>\n",
    ])


def write_report(run_dir: str | Path, output: str | Path | None = None, **kwargs: Any) -> Path:
    """Render the report and write it atomically to ``output`` (default ``RUN_DIR/report.html``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run directory {run} does not exist; pass the experiment directory (e.g. runs/demo)")
    path = Path(output) if output else run / REPORT_NAME
    text = render_report(run, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, durable=False)  # derived: atomic for readers, rewritten at will
    logger.debug("wrote %s (%d bytes)", path, len(text))
    return path
