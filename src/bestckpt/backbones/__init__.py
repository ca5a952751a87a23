"""Feature extractors (backbones) by kind and name, built once per process and cached.

Kinds and their interface (all take uint8 images ``Tensor[N, 3, H, W]`` and do their own preprocessing):

- ``"inception"``: ``.features(images) -> {"pool": Tensor[N, D], "logits": Tensor[N, C]}``
- ``"clip"``: ``.encode_images(images) -> Tensor[N, E]`` (L2-normalised), ``.encode_texts(list[str]) -> Tensor[N, E]``
- ``"lpips"``: ``.distance(images_a, images_b) -> Tensor[N]``

Names are found, in this order, among those registered in this process with :func:`register_backbone`,
``hf:<repo or local dir>`` for CLIP, and the entry points of the groups ``bestckpt.backbones.<kind>``
(the standard Python plugin mechanism). bestckpt declares its own in ``pyproject.toml``: the standard
backbones (``inception-2015-12-05``, ``clip-vit-b-32``, ``clip-vit-l-14``, ``lpips-alex``, ``lpips-vgg``),
the random test networks of :mod:`bestckpt.testing` (``*-random-test``: meaningless for real evaluation)
and the demo evaluators of :mod:`bestckpt.demo` (``demo-classifier``, ``demo-clip``, ``demo-lpips``).
A fresh process (the background worker, the sidecar, the CLI) therefore resolves every name without
importing anything first, and this package never names a higher layer. A third-party package adds
names by declaring entry points in the same groups. A factory is ``factory(weights_dir: Path | None,
device: torch.device) -> backbone``; the kinds' interfaces are the protocols of :mod:`bestckpt.backbones.protocols`
(:class:`InceptionLike`, :class:`ClipLike`, :class:`LpipsLike`), which ``get_backbone`` returns per kind.
"""
from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from bestckpt.backbones.protocols import Backbone, BackboneFactory, ClipLike, InceptionLike, LpipsLike
from bestckpt.errors import BackboneError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    import torch

__all__ = [
    "KINDS", "DEFAULT_BACKBONES", "register_backbone", "get_backbone", "available_backbones", "clear_backbone_cache",
    "BackboneError", "Backbone", "BackboneFactory", "InceptionLike", "ClipLike", "LpipsLike",
]

logger = logging.getLogger(__name__)

KINDS = ("inception", "clip", "lpips")
#: The standard backbones of FID/IS/KID, CLIP score and LPIPS (read-only).
DEFAULT_BACKBONES: Mapping[str, str] = types.MappingProxyType(
    {"inception": "inception-2015-12-05", "clip": "clip-vit-b-32", "lpips": "lpips-alex"})

_FACTORIES: dict[tuple[str, str], BackboneFactory] = {}
_CACHE: dict[tuple[str, str, str | None, str], Backbone] = {}
_LOCK = threading.RLock()


def register_backbone(kind: str, name: str, factory: BackboneFactory, *, replace: bool = False) -> None:
    """Register ``factory(weights_dir, device)`` under (kind, name)."""
    if kind not in KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; use one of {KINDS}")
    if not callable(factory):
        raise TypeError(f"factory for {kind}/{name} must be callable, got {type(factory).__name__}")
    with _LOCK:
        if (kind, name) in _FACTORIES and not replace and _FACTORIES[(kind, name)] is not factory:
            raise ValueError(f"backbone {kind}/{name} is already registered; pass replace=True to override")
        _FACTORIES[(kind, name)] = factory
        for key in [k for k in _CACHE if k[0] == kind and k[1] == name]:
            del _CACHE[key]


def available_backbones(kind: str | None = None) -> list[str]:
    """Registered and installed names (of one kind, or ``kind/name`` for all)."""
    with _LOCK:
        known = set(_FACTORIES)
    for k in KINDS:
        known.update((k, n) for n in _entry_points(k))
    if kind is None:
        return sorted(f"{k}/{n}" for k, n in known)
    return sorted(n for k, n in known if k == kind)


def clear_backbone_cache() -> None:
    """Forget built backbones (frees their memory; the next get_backbone rebuilds)."""
    with _LOCK:
        _CACHE.clear()


def _device_key(device: str | torch.device) -> str:
    import torch

    return str(torch.device(device))


@overload
def get_backbone(kind: Literal["inception"], name: str | None = None, *,
                 weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> InceptionLike: ...


@overload
def get_backbone(kind: Literal["clip"], name: str | None = None, *,
                 weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> ClipLike: ...


@overload
def get_backbone(kind: Literal["lpips"], name: str | None = None, *,
                 weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> LpipsLike: ...


@overload
def get_backbone(kind: str, name: str | None = None, *,
                 weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> Backbone: ...


def get_backbone(kind: str, name: str | None = None, *,
                 weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> Backbone:
    """The backbone (kind, name) on ``device``, built on first use and cached per (kind, name, weights_dir, device)."""
    import torch

    if kind not in KINDS:
        raise BackboneError(f"unknown backbone kind {kind!r}; use one of {KINDS}")
    name = name or DEFAULT_BACKBONES[kind]
    wdir = None if weights_dir is None else str(Path(weights_dir).expanduser().resolve())
    key = (kind, name, wdir, _device_key(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        factory = _lookup(kind, name)
        logger.info("building backbone %s/%s on %s", kind, name, key[3])
        backbone = factory(None if wdir is None else Path(wdir), torch.device(device))
        _CACHE[key] = backbone
        return backbone


ENTRY_POINT_GROUP = "bestckpt.backbones."  # + kind


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    """The installed entry points of kind ``kind``, by name."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP + kind)}


def _lookup(kind: str, name: str) -> BackboneFactory:
    with _LOCK:
        if (kind, name) in _FACTORIES:
            return _FACTORIES[(kind, name)]
    if kind == "clip" and name.startswith("hf:"):
        from .clip import hf_clip_factory

        return hf_clip_factory(name[3:])
    found = _entry_points(kind).get(name)
    if found is None:
        raise BackboneError(f"unknown {kind} backbone {name!r}; known: {available_backbones(kind)} (register one "
                            f"with bestckpt.backbones.register_backbone, or declare an entry point in the group "
                            f"'{ENTRY_POINT_GROUP}{kind}'; if a built-in name is missing, reinstall bestckpt)")
    factory = found.load()
    if not callable(factory):
        raise BackboneError(f"entry point {found.value!r} of {kind} backbone {name!r} is not callable")
    with _LOCK:
        return _FACTORIES.setdefault((kind, name), factory)
