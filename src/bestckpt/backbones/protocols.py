"""What a backbone of each kind must provide: the structural types :func:`~bestckpt.backbones.get_backbone` returns.

A backbone is any object with the kind's methods (no base class to inherit): the standard ones, the random test
networks, the demo evaluators and third-party backbones declared as entry points all qualify. Every method takes
uint8 images ``Tensor[N, 3, H, W]`` (0..255) and does its own preprocessing. The protocols name only what the
scorer calls; a backbone may also carry a ``cache_id`` string (weights + preprocessing) that names the reference
statistics computed with it.

Importing this module does not import torch (the annotations are read by type checkers only).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["Backbone", "BackboneFactory", "ClipLike", "InceptionLike", "LpipsLike"]


@runtime_checkable
class InceptionLike(Protocol):
    """Kind ``"inception"``: pool features for FID/KID and class logits for the Inception Score."""

    def features(self, images: torch.Tensor, /) -> Mapping[str, torch.Tensor]:
        """``{"pool": Tensor[N, D], "logits": Tensor[N, C]}`` for uint8 images ``[N, 3, H, W]``."""
        ...


@runtime_checkable
class ClipLike(Protocol):
    """Kind ``"clip"``: image and text embeddings in one space, for the CLIP score."""

    def encode_images(self, images: torch.Tensor, /) -> torch.Tensor:
        """L2-normalised embeddings ``Tensor[N, E]`` of uint8 images ``[N, 3, H, W]``."""
        ...

    def encode_texts(self, texts: list[str], /) -> torch.Tensor:
        """L2-normalised embeddings ``Tensor[N, E]`` of ``N`` prompts."""
        ...


@runtime_checkable
class LpipsLike(Protocol):
    """Kind ``"lpips"``: perceptual distance between paired images."""

    def distance(self, images_a: torch.Tensor, images_b: torch.Tensor, /) -> torch.Tensor:
        """``Tensor[N]``: distance of ``images_a[i]`` to ``images_b[i]`` (uint8, same shape ``[N, 3, H, W]``)."""
        ...


#: A backbone of any kind.
Backbone: TypeAlias = InceptionLike | ClipLike | LpipsLike
#: ``factory(weights_dir, device) -> backbone``: what :func:`~bestckpt.backbones.register_backbone` and the
#: ``bestckpt.backbones.<kind>`` entry points provide.
BackboneFactory: TypeAlias = Callable[[Path | None, "torch.device"], Backbone]


if TYPE_CHECKING:  # the standard backbones satisfy their kind's protocol (checked by mypy, never run)
    from bestckpt.backbones.clip import HFClipBackbone, OpenClipBackbone
    from bestckpt.backbones.inception import InceptionBackbone
    from bestckpt.backbones.lpips import LpipsBackbone

    def _standard_backbones_conform(
        inception: InceptionBackbone, open_clip: OpenClipBackbone, hf_clip: HFClipBackbone, lpips: LpipsBackbone
    ) -> tuple[InceptionLike, ClipLike, ClipLike, LpipsLike]:
        return inception, open_clip, hf_clip, lpips
