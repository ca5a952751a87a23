"""LPIPS distance from per-layer backbone features and the published linear weights (the pure part of LPIPS).

d(x₀, x₁) = Σ_l mean_{h,w} Σ_c w_l,c · (f̂₀ˡ − f̂₁ˡ)², where f̂ = f / (‖f‖₂ over channels + eps) and w_l ≥ 0 are the
1×1 "lin" layers of LPIPS v0.1. Inputs are the backbone's activations (after the LPIPS scaling layer applied to
[-1, 1] images); computing them is the backbone's job (:mod:`bestckpt.backbones.lpips`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["lpips_from_features", "normalize_channels"]


def normalize_channels(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise features [N, C, H, W] over channels (eps as in the lpips package)."""
    return feat / (torch.sqrt((feat * feat).sum(dim=1, keepdim=True)) + eps)


def lpips_from_features(
    features_0: Sequence[torch.Tensor],
    features_1: Sequence[torch.Tensor],
    lin_weights: Sequence[torch.Tensor],
    eps: float = 1e-10,
) -> torch.Tensor:
    """LPIPS distance [N] from per-layer features [N, C_l, H_l, W_l] of both images and weights [C_l] per layer."""
    if not (len(features_0) == len(features_1) == len(lin_weights)) or not lin_weights:
        raise ValueError(
            f"need the same non-zero number of layers: got {len(features_0)}, {len(features_1)} feature lists and "
            f"{len(lin_weights)} linear weights"
        )
    total = None
    for f0, f1, w in zip(features_0, features_1, lin_weights):
        if f0.shape != f1.shape or f0.dim() != 4:
            raise ValueError(f"paired layer features must have equal shapes [N, C, H, W]; got {tuple(f0.shape)} "
                             f"and {tuple(f1.shape)} (resize both images to the same size first)")
        w = w.reshape(-1).to(f0)
        if w.numel() != f0.shape[1]:
            raise ValueError(f"linear weight has {w.numel()} channels but the layer has {f0.shape[1]}")
        diff = (normalize_channels(f0, eps) - normalize_channels(f1, eps)) ** 2
        layer = (diff * w.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        total = layer if total is None else total + layer
    assert total is not None
    return total
