"""The one uint8 image check: what it accepts, what it names when it refuses, which exception each caller gets."""
from __future__ import annotations

import re

import pytest
import torch

from bestckpt.backbones.images import QUANTISE_HINT, check_uint8_images


def test_accepts_uint8_nchw_rgb_and_returns_it() -> None:
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert check_uint8_images(images) is images
    assert check_uint8_images(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)).shape[0] == 0  # an empty shard


@pytest.mark.parametrize("bad, needle", [
    (torch.zeros(2, 3, 8, 8),
     r"dtype torch\.float32; expected torch\.uint8 .*\(got shape \(2, 3, 8, 8\)\); quantise"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int64),
     r"dtype torch\.int64; expected torch\.uint8 \[N, 3, H, W\] in 0\.\.255"),
    ([1, 2], r"got a list; expected a torch\.uint8 tensor \[N, 3, H, W\] in 0\.\.255; quantise"),
    (None, "got a NoneType"),
])
def test_wrong_type_or_dtype_names_what_was_received_with_the_hint(bad: object, needle: str) -> None:
    with pytest.raises(ValueError, match=r"^refs: " + needle):
        check_uint8_images(bad, "refs")


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 8, 8), (2, 8, 8, 3)])
def test_wrong_shape_names_the_shape_without_the_dtype_hint(shape: tuple[int, ...]) -> None:
    message = f"images: shape {shape}; expected [N, 3, H, W] (RGB, channels first)"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        check_uint8_images(torch.zeros(shape, dtype=torch.uint8))
    assert QUANTISE_HINT not in str(info.value)


def test_callers_choose_exception_types_and_hint() -> None:
    with pytest.raises(TypeError, match="x: dtype .*; convert$"):
        check_uint8_images(torch.zeros(1, 3, 4, 4), "x", error=TypeError, shape_error=ValueError, hint="; convert")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        check_uint8_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), error=TypeError, shape_error=ValueError)
    with pytest.raises(KeyError):
        check_uint8_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), error=KeyError)
    with pytest.raises(ValueError) as info:
        check_uint8_images(torch.zeros(1, 3, 4, 4, dtype=torch.int16), hint="")
    assert str(info.value).endswith("(got shape (1, 3, 4, 4))")
