"""What the runners need of a scorer: :class:`ScorerLike`, the structural type of ``Evaluator(scorer=...)``.

:class:`~bestckpt.evaluation.scorer.Scorer` is the standard implementation; a custom scorer (``--scorer
module:factory``) is any object with these three methods. The sampler's contract is
:class:`~bestckpt.evaluation.sampler.Sampler`. Importing this module does not import torch.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["ScorerLike"]


@runtime_checkable
class ScorerLike(Protocol):
    """Per-sample features, reference statistics, and the scores computed from both.

    ``features`` is called once per batch on every rank; its per-sample tensors are gathered across
    ranks and passed to ``score`` (rank 0 only). ``score`` reports a metric it cannot compute as
    ``None`` (optionally with the reason in a ``failures`` attribute of the returned mapping), never
    as a made-up number.
    """

    def features(self, images: torch.Tensor, prompts: Sequence[str], paired_references: torch.Tensor | None,
                 /) -> Mapping[str, torch.Tensor]:
        """``name -> Tensor[N, ...]`` for uint8 images ``[N, 3, H, W]`` and their prompts (and paired references)."""
        ...

    def reference_statistics(self, reference_images: torch.Tensor, /,
                             cache_dir: str | os.PathLike[str] | None = None) -> Mapping[str, Any]:
        """What ``score`` needs of the reference image set (uint8 ``[M, 3, H, W]``), cached under ``cache_dir``."""
        ...

    def score(self, features: Mapping[str, torch.Tensor], reference: Mapping[str, Any] | None = None, /,
              seed: int = 0) -> Mapping[str, float | None]:
        """Metric name -> value (None: could not be computed) from all samples' features."""
        ...


if TYPE_CHECKING:  # the standard scorer satisfies the contract (checked by mypy, never run)
    from bestckpt.evaluation.scorer import Scorer

    def _standard_scorer_conforms(scorer: Scorer) -> ScorerLike:
        return scorer
