"""Feature extractors (backbones) by kind and name, built once per process and cached.

Kinds and their interface (all take uint8 images ``Tensor[N, 3, H, W]`` and do their own preprocessing):

- ``"inception"``: ``.features(images) -> {"pool": Tensor[N, D], "logits": Tensor[N, C]}``
- ``"clip"``: ``.encode_images(images) -> Tensor[N, E]`` (L2-normalised), ``.encode_texts(list[str]) -> Tensor[N, E]``
- ``"lpips"``: ``.distance(images_a, images_b) -> Tensor[N]``

Built-in names (default first): inception ``inception-2015-12-05``, ``inception-2015-12-05-random-test``;
clip ``clip-vit-b-32``, ``clip-vit-l-14``, ``hf:<repo or local dir>``, ``clip-vit-b-32-random-test``,
``clip-tiny-random-test``; lpips ``lpips-alex``, ``lpips-vgg``, ``lpips-alex-random-test``, ``lpips-vgg-random-test``.
``*-random-test`` networks are random-initialised and meaningless for real evaluation (tests only).
Other modules add names with :func:`register_backbone` (``bestckpt.backbones.demo`` registers the demo evaluators
and is imported on first lookup of an unknown name). A factory is ``factory(weights_dir: Path | None,
device: torch.device) -> backbone``.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS", "DEFAULT_BACKBONES", "register_backbone", "get_backbone", "available_backbones", "clear_backbone_cache",
    "BackboneError",
]

logger = logging.getLogger(__name__)

KINDS = ("inception", "clip", "lpips")
DEFAULT_BACKBONES = {"inception": "inception-2015-12-05", "clip": "clip-vit-b-32", "lpips": "lpips-alex"}

Factory = Callable[[Path | None, Any], Any]
_FACTORIES: dict[tuple[str, str], Factory] = {}
_CACHE: dict[tuple[str, str, str | None, str], Any] = {}
_LOCK = threading.RLock()
_OPTIONAL_MODULES = ("bestckpt.backbones.demo",)


class BackboneError(KeyError):
    """Unknown backbone kind or name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_backbone(kind: str, name: str, factory: Factory, *, replace: bool = False) -> None:
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
    """Registered names (of one kind, or ``kind/name`` for all)."""
    _load_builtin()
    with _LOCK:
        if kind is None:
            return sorted(f"{k}/{n}" for k, n in _FACTORIES)
        return sorted(n for k, n in _FACTORIES if k == kind)


def clear_backbone_cache() -> None:
    """Forget built backbones (frees their memory; the next get_backbone rebuilds)."""
    with _LOCK:
        _CACHE.clear()


def _device_key(device: Any) -> str:
    import torch

    return str(torch.device(device))


def get_backbone(kind: str, name: str | None = None, *, weights_dir: str | os.PathLike[str] | None = None,
                 device: Any = "cpu") -> Any:
    """The backbone (kind, name) on ``device``, built on first use and cached per (kind, name, weights_dir, device)."""
    import torch

    if kind not in KINDS:
        raise BackboneError(f"unknown backbone kind {kind!r}; use one of {KINDS}")
    _load_builtin()
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


def _lookup(kind: str, name: str) -> Factory:
    if (kind, name) not in _FACTORIES and kind == "clip" and name.startswith("hf:"):
        from .clip import hf_clip_factory

        return hf_clip_factory(name[3:])
    if (kind, name) not in _FACTORIES:
        for module in _OPTIONAL_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
    if (kind, name) not in _FACTORIES:
        known = sorted(n for k, n in _FACTORIES if k == kind)
        raise BackboneError(f"unknown {kind} backbone {name!r}; known: {known} (or register one with "
                            f"bestckpt.backbones.register_backbone)")
    return _FACTORIES[(kind, name)]


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    """Register the built-in names (lazily, so importing this package does not import torch)."""
    global _BUILTIN_LOADED
    with _LOCK:
        if _BUILTIN_LOADED:
            return
        _BUILTIN_LOADED = True
        from . import clip, inception, lpips

        for module in (inception, clip, lpips):
            for (kind, name), factory in module.FACTORIES.items():
                _FACTORIES.setdefault((kind, name), factory)
