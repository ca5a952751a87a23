"""CLIP score: agreement of each image with ITS OWN prompt (paired), from image and text embeddings.

Conventions (numbers are not comparable across them; record which one was used):

- ``"cosine"`` (default, the guide's scale): mean over pairs of cos(image_i, text_i), in [-1, 1].
- ``"torchmetrics"``: 100 · mean cos, clamped at 0 *after* the mean (``torchmetrics.functional.clip_score``).
- ``"hessel"``: mean over pairs of 2.5 · max(cos, 0) (Hessel et al. 2021, CLIPScore).

Embeddings are L2-normalised here again (idempotent), so raw projections may be passed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._util import as_float64_2d

__all__ = ["clip_score", "clip_cosines", "CLIP_CONVENTIONS"]

CLIP_CONVENTIONS = ("cosine", "torchmetrics", "hessel")


def clip_cosines(image_embeddings: Any, text_embeddings: Any) -> np.ndarray:
    """Per-pair cosine [N] of image embeddings [N, E] with text embeddings [N, E] (row i with row i)."""
    img = as_float64_2d(image_embeddings, "image_embeddings")
    txt = as_float64_2d(text_embeddings, "text_embeddings")
    if img.shape != txt.shape:
        raise ValueError(
            f"image embeddings {img.shape} and text embeddings {txt.shape} must be paired row by row with the same "
            f"shape; encode exactly one prompt per image"
        )
    if img.shape[0] == 0:
        raise ValueError("CLIP score needs at least one image-prompt pair, got 0")
    ni, nt = np.linalg.norm(img, axis=1), np.linalg.norm(txt, axis=1)
    if np.any(ni == 0) or np.any(nt == 0):
        raise ValueError("an embedding has zero norm; the cosine is undefined (check the encoder output)")
    return (img * txt).sum(axis=1) / (ni * nt)


def clip_score(image_embeddings: Any, text_embeddings: Any, convention: str = "cosine") -> float:
    """Mean paired CLIP score under ``convention`` (``"cosine"``, ``"torchmetrics"`` or ``"hessel"``)."""
    cos = clip_cosines(image_embeddings, text_embeddings)
    if convention == "cosine":
        return float(cos.mean())
    if convention == "torchmetrics":
        return float(max(100.0 * cos.mean(), 0.0))
    if convention == "hessel":
        return float((2.5 * np.clip(cos, 0.0, None)).mean())
    raise ValueError(f"unknown CLIP score convention {convention!r}; use one of {CLIP_CONVENTIONS}")
