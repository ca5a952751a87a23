"""Backbones satisfy their kind's protocol (the structural types ``get_backbone`` returns)."""
from __future__ import annotations

import pytest

from bestckpt.backbones import ClipLike, InceptionLike, LpipsLike, get_backbone


@pytest.mark.parametrize(("kind", "name", "protocol"), [
    ("inception", "demo-classifier", InceptionLike),
    ("clip", "demo-clip", ClipLike),
    ("lpips", "demo-lpips", LpipsLike),
])
def test_registered_backbones_satisfy_their_kind(kind: str, name: str, protocol: type) -> None:
    backbone = get_backbone(kind, name)
    assert isinstance(backbone, protocol)


def test_an_object_without_the_methods_is_no_backbone() -> None:
    assert not isinstance(object(), (InceptionLike, ClipLike, LpipsLike))
