"""Small private helpers shared by the metric modules: converting inputs to float64 numpy arrays."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_float64_2d", "as_float64"]


def as_float64(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (numpy array or torch tensor, any device) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values (shape {arr.shape}); check the feature extractor input")
    return arr


def as_float64_2d(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a float64 array of shape [N, D], raising a clear error for other shapes."""
    arr = as_float64(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got shape {arr.shape}; pass per-sample feature vectors")
    return arr
