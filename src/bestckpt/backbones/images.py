"""The image contract shared by backbones, evaluation and the demo: uint8 ``Tensor[N, 3, H, W]`` in 0..255.

Every metric is computed on quantised images, exactly as reference images are stored, so a float image is
refused rather than rescaled by guess (a guessed scale would make scores incomparable).
:func:`check_uint8_images` is the one check; each caller chooses the exception type and the conversion hint.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["QUANTISE_HINT", "check_uint8_images"]

#: How to turn [0, 1] float images into the expected uint8 images.
QUANTISE_HINT = "; quantise [0, 1] floats with x.clamp(0, 1).mul(255).round().to(torch.uint8)"


def check_uint8_images(
    images: Any,
    what: str = "images",
    *,
    error: type[Exception] = ValueError,
    shape_error: type[Exception] | None = None,
    hint: str = QUANTISE_HINT,
) -> torch.Tensor:
    """Return ``images`` if it is a uint8 ``Tensor[N, 3, H, W]``; otherwise raise naming what was received.

    A non-tensor or a wrong dtype raises ``error`` with ``hint`` (how to convert) appended; a uint8 tensor of the
    wrong shape raises ``shape_error`` (default: ``error``). ``what`` names the argument in the message.
    """
    if not isinstance(images, torch.Tensor):
        raise error(f"{what}: got a {type(images).__name__}; expected a torch.uint8 tensor [N, 3, H, W] in "
                    f"0..255{hint}")
    if images.dtype != torch.uint8:
        raise error(f"{what}: dtype {images.dtype}; expected torch.uint8 [N, 3, H, W] in 0..255 (got shape "
                    f"{tuple(images.shape)}){hint}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise (shape_error or error)(f"{what}: shape {tuple(images.shape)}; expected [N, 3, H, W] (RGB, channels "
                                     f"first) of torch.uint8")
    return images
