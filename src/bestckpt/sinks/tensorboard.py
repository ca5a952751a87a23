"""TensorBoard sink: the guide's ``Evaluation/*`` scalars at the checkpoint's step, plus a sample grid.

Only metrics that were actually computed are written: a failed or missing metric leaves a gap in
the curve instead of a made-up 0.0 (which would look like a real, terrible score).
TensorBoard is optional: importing this module is free, constructing the sink without the
``tensorboard`` package raises an ImportError that names the extra to install.

Confidence intervals (when given) go to ``<tag>_CI_low`` / ``<tag>_CI_high`` next to the metric's own tag
(e.g. ``Evaluation/FID_CI_low``); the guide's tags are unchanged.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bestckpt.tracking.attached import result_scalars

if TYPE_CHECKING:
    from bestckpt.sinks.base import EvaluationEvent

__all__ = ["TAGS", "TensorBoardSink"]

logger = logging.getLogger(__name__)

#: metric name -> TensorBoard tag (the guide's names, plus KID)
TAGS: Mapping[str, str] = {
    "clip_score": "Evaluation/CLIP_Score",
    "lpips": "Evaluation/LPIPS",
    "inception_score": "Evaluation/Inception_Score",
    "fid": "Evaluation/FID",
    "kid": "Evaluation/KID",
    "composite_score": "Evaluation/Composite_Score",
}
IS_BEST_TAG = "Evaluation/IsBest"
SAMPLES_TAG = "Evaluation/Samples"


class TensorBoardSink:
    """Writes evaluation results into a TensorBoard log directory (real event files)."""

    def __init__(self, log_dir: str | Path | None = None, *, filename_suffix: str = "",
                 experiment_dir: str | Path | None = None) -> None:
        if log_dir is None:
            if experiment_dir is None:
                raise ValueError("the tensorboard sink needs a log directory: set tensorboard_dir (or "
                                 "--sink-option tensorboard.log_dir=DIR)")
            log_dir = Path(experiment_dir) / "tensorboard_logs"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoard logging needs the 'tensorboard' package: pip install 'bestckpt[tensorboard]' "
                f"(or drop the tensorboard log dir option). Import error: {exc}"
            ) from exc
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), filename_suffix=filename_suffix)

    def write(
        self,
        step: int,
        scores: Mapping[str, object],
        *,
        is_best: bool | None = None,
        images: torch.Tensor | None = None,
        intervals: Mapping[str, tuple[float, float]] | None = None,
    ) -> list[str]:
        """Write scalars for ``step`` (and an image grid of uint8 ``images[K,3,H,W]``); returns tags written.

        Values that are not finite numbers (None for a failed metric, NaN, anything else) are skipped; so is the
        interval of a metric that was not written.
        """
        written: list[str] = []
        for name, value in scores.items():
            tag = TAGS.get(name, f"Evaluation/{name}")
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                logger.warning("not logging %s=%r at step %d: not a finite number", name, value, step)
                continue
            self._writer.add_scalar(tag, float(value), global_step=int(step))
            written.append(tag)
            bounds = (intervals or {}).get(name)
            if bounds is not None and all(math.isfinite(float(b)) for b in bounds):
                for suffix, bound in zip(("_CI_low", "_CI_high"), bounds):
                    self._writer.add_scalar(tag + suffix, float(bound), global_step=int(step))
                    written.append(tag + suffix)
        if is_best is not None:
            self._writer.add_scalar(IS_BEST_TAG, 1.0 if is_best else 0.0, global_step=int(step))
            written.append(IS_BEST_TAG)
        if images is not None and images.numel() > 0:
            from torchvision.utils import make_grid

            nrow = max(1, int(math.ceil(math.sqrt(images.shape[0]))))
            grid = make_grid(images.detach().cpu(), nrow=nrow, padding=2, pad_value=255)
            self._writer.add_image(SAMPLES_TAG, grid, global_step=int(step), dataformats="CHW")
            written.append(SAMPLES_TAG)
        self._writer.flush()
        return written

    def log_evaluation(self, event: EvaluationEvent) -> None:
        """The :class:`~bestckpt.sinks.base.Sink` call: :meth:`write` of a successful evaluation (a failed one
        leaves a gap in the curves)."""
        if event.ok:
            self.write(event.step, event.scores, is_best=event.is_best, images=event.preview,
                       intervals=event.intervals)

    def log_best(self, step: int, path: str, scores: Mapping[str, float | None]) -> None:
        """Nothing more to write: ``Evaluation/IsBest`` already marks the step."""

    def finish(self, summary: Mapping[str, object], results_file: Path | None) -> None:
        """Results attached after scoring (``tracker.annotate``: ``Evaluation/<name>/...`` at their step); the
        rest of the summary is in the results JSON and the report."""
        for step, tag, value in result_scalars(summary.get("results")):  # type: ignore[arg-type]
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
