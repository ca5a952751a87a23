"""The user's side of evaluation: how a committed checkpoint becomes images.

Evaluation is a function of (checkpoint on disk, protocol). The only model-specific part is the
*sampler*: a callable the user supplies that loads a checkpoint (preferably its EMA weights) and
renders one image per (prompt, seed). Everything else (which prompts, which seeds, how many
images, which metrics) is fixed by the :class:`~bestckpt.evaluation.protocol.Protocol`, so the
same sampler serves inline, background and sidecar evaluation and offline re-scoring.

A sampler is named on the command line and across process boundaries as ``"module:factory"``:
``factory()`` is called in the evaluating process and returns the sampler. That keeps samplers
picklable by construction (only the string travels) and lets the factory load heavy things once.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, runtime_checkable
from typing import Protocol as TypingProtocol

import torch

from bestckpt.backbones.images import QUANTISE_HINT, check_uint8_images
from bestckpt.errors import SamplerError, SamplerOutputError

__all__ = [
    "SampleBatch",
    "Sampler",
    "SamplerError",
    "SamplerOutputError",
    "SamplerSettings",
    "WEIGHT_KINDS",
    "load_factory",
    "load_sampler",
    "validate_sample_batch",
]

logger = logging.getLogger(__name__)

#: Which weights produced the images. "unknown" is recorded when a sampler returns a bare tensor,
#: so a score never claims EMA weights it cannot vouch for.
WEIGHT_KINDS = ("ema", "online", "unknown")


@dataclass(frozen=True)
class SamplerSettings:
    """Sampling settings fixed by the protocol, so every checkpoint is sampled the same way.

    Defaults are the usual DiT/HunyuanDiT evaluation settings: 50 solver steps with
    classifier-free guidance 4.5 at 256 px (the original guide sampled 1000 ancestral steps
    without guidance, which is slow and not what users deploy). ``extra`` carries
    sampler-specific options (scheduler name, negative prompt...) and must be JSON-serialisable
    because it is part of the protocol hash.
    """

    num_steps: int = 50
    guidance_scale: float = 4.5
    image_size: int = 256
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"SamplerSettings.num_steps must be an integer >= 1, got {self.num_steps!r}")
        if not isinstance(self.guidance_scale, (int, float)) or not math.isfinite(self.guidance_scale):
            raise ValueError(
                f"SamplerSettings.guidance_scale must be a finite number, got {self.guidance_scale!r}"
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"SamplerSettings.image_size must be an integer >= 8 (pixels), got {self.image_size!r}")
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"SamplerSettings.extra must be a mapping, got {type(self.extra).__name__}")
        try:
            frozen = json.loads(json.dumps(dict(self.extra), sort_keys=True, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"SamplerSettings.extra must be JSON-serialisable (it is part of the protocol hash): {exc}"
            ) from exc
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        object.__setattr__(self, "extra", types.MappingProxyType(frozen))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (used by the protocol hash and ``Protocol.to_file``)."""
        return {
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "image_size": self.image_size,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplerSettings:
        known = {"num_steps", "guidance_scale", "image_size", "extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))

    # MappingProxyType neither pickles nor hashes: travel and hash as the JSON-able dict
    def __reduce__(self) -> tuple[Any, ...]:
        return (SamplerSettings.from_dict, (self.to_dict(),))

    # a MappingProxy is not hashable; hash the JSON form so settings can key caches
    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class SampleBatch:
    """Images produced by a sampler.

    images: uint8 ``Tensor[N, 3, H, W]`` in 0..255 (quantised by the sampler with round, after
    clamping, exactly as reference images are stored), one per requested (prompt, seed), in order.
    weights: ``"ema"`` or ``"online"``: which weights were sampled (recorded with the score).
    """

    images: torch.Tensor
    weights: str = "ema"


@runtime_checkable
class Sampler(TypingProtocol):
    """What the user supplies: turn a committed checkpoint into images.

    ``checkpoint_path`` is a file or a DeepSpeed tag directory. The sampler must be deterministic
    given ``seeds`` (seed the initial noise with ``torch.Generator(device).manual_seed(seed)``),
    should use EMA weights when the checkpoint has them, run under ``torch.no_grad()``, and
    return one image per prompt: ``len(prompts) == len(seeds) == N``.
    """

    def __call__(
        self,
        checkpoint_path: Path,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: SamplerSettings,
        device: torch.device,
    ) -> SampleBatch: ...


def load_sampler(spec: str) -> Sampler:
    """Build a sampler from ``"package.module:factory"`` (``factory`` may be dotted: ``Class.create``).

    ``factory()`` is called with no arguments and must return a callable sampler.
    """
    sampler = load_factory(spec)
    if not callable(sampler):
        raise SamplerError(
            f"factory {spec!r} returned a {type(sampler).__name__}, which is not callable; "
            "it must return a sampler(checkpoint_path, prompts, seeds, settings, device)"
        )
    return sampler


def load_factory(spec: str) -> Any:
    """``factory()`` for ``"package.module:factory"``: how samplers (and custom scorers) travel by name."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise SamplerError(
            f"sampler spec must look like 'package.module:factory', got {spec!r}; "
            "factory() is called with no arguments and returns the sampler"
        )
    module_name, attr_path = spec.split(":")
    if not module_name or not attr_path:
        raise SamplerError(f"sampler spec {spec!r} needs both a module and a factory: 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SamplerError(
            f"cannot import module {module_name!r} of sampler spec {spec!r}: {exc}. "
            "Is it installed or on PYTHONPATH?"
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise SamplerError(
                f"module {module_name!r} has no attribute {attr_path!r} (sampler spec {spec!r})"
            ) from exc
    if not callable(target):
        raise SamplerError(f"{spec!r} names a {type(target).__name__}, not a factory function or class")
    return target()


def validate_sample_batch(output: Any, *, expected_n: int, image_size: int | None = None) -> SampleBatch:
    """Check a sampler's output and return it as a :class:`SampleBatch`.

    A bare tensor is accepted (recorded as weights ``"unknown"``). Every problem raises
    :class:`SamplerOutputError` naming what was received, never silently fixes it: a float image
    in [0, 1] that we rescaled by guess would make scores incomparable.
    """
    if isinstance(output, torch.Tensor):
        logger.warning("sampler returned a bare tensor; recording weights as 'unknown' (return a SampleBatch)")
        batch = SampleBatch(images=output, weights="unknown")
    elif isinstance(output, SampleBatch):
        batch = output
    else:
        raise SamplerOutputError(
            f"sampler returned {type(output).__name__}; expected SampleBatch(images=uint8 Tensor[N,3,H,W], "
            "weights='ema'|'online')"
        )
    images = batch.images
    if not isinstance(images, torch.Tensor):
        raise SamplerOutputError(f"SampleBatch.images is a {type(images).__name__}; expected a torch.Tensor")
    if batch.weights not in WEIGHT_KINDS:
        raise SamplerOutputError(f"SampleBatch.weights is {batch.weights!r}; expected one of {WEIGHT_KINDS}")
    check_uint8_images(images, "sampler images", error=SamplerOutputError,
                       hint=QUANTISE_HINT if images.is_floating_point() else "")
    if images.shape[0] != expected_n:
        raise SamplerOutputError(
            f"sampler returned {images.shape[0]} images for {expected_n} prompts/seeds; expected one per pair"
        )
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        raise SamplerOutputError(
            f"sampler images are {images.shape[2]}x{images.shape[3]}; the protocol's image_size is "
            f"{image_size}x{image_size}"
        )
    return SampleBatch(images=images.detach().cpu().contiguous(), weights=batch.weights)
