"""Did the model draw what its prompt says? Per-attribute accuracy of generated demo images, measured twice.

Each demo prompt states five attributes (size, colour, shape, position, background). A generated image is right
on an attribute when the attribute read back from the image equals the prompt's. Two independent readers:

- ``classifier``: the demo classifier's five heads (:meth:`bestckpt.demo.evaluators.DemoClassifier.predict_attributes`).
  It is also the FID/KID/IS backbone, so a model could in principle fool it and the metrics together.
- ``nearest render``: the attributes of the exact render (:func:`bestckpt.demo.data.render`) nearest to the image in
  pixel space (squared L2 over all 1,890 attribute combinations). It uses no network at all.

``accuracy`` reduces (predicted, target) class ids [N, 5] to the fraction right per attribute and for all five
together (``"all"``). Everything here is a pure function of its inputs except the two readers' loading of the
shipped classifier weights / the renders (both cached).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bestckpt.demo.data import ATTRIBUTE_NAMES, attrs_to_indices, combinations, render

__all__ = ["ALL", "accuracy", "attribute_targets", "checkpoint_accuracy", "classifier_attributes", "exact_renders", "spearman",
           "format_accuracy",
           "nearest_render_attributes", "prompt_accuracy"]

#: Key of the all-five-attributes-right fraction in an accuracy mapping.
ALL = "all"


def attribute_targets(attrs_list: Sequence[Mapping[str, str]]) -> torch.Tensor:
    """Class ids [N, 5] (``ATTRIBUTE_NAMES`` order) of each prompt's attributes."""
    return torch.tensor([attrs_to_indices(a) for a in attrs_list], dtype=torch.long).reshape(-1, len(ATTRIBUTE_NAMES))


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Fraction of rows right per attribute and for all five together (key ``"all"``).

    predicted, target: int class ids [N, 5] in ``ATTRIBUTE_NAMES`` order, N >= 1."""
    if predicted.shape != target.shape or predicted.dim() != 2 or predicted.shape[1] != len(ATTRIBUTE_NAMES):
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must both be "
                         f"[N, {len(ATTRIBUTE_NAMES)}] class ids in {ATTRIBUTE_NAMES} order")
    if predicted.shape[0] == 0:
        raise ValueError("accuracy of zero images is undefined; pass at least one image")
    right = predicted.eq(target)  # [N, 5]
    out = {name: float(right[:, i].double().mean()) for i, name in enumerate(ATTRIBUTE_NAMES)}
    out[ALL] = float(right.all(dim=1).double().mean())
    return out


@functools.cache
def exact_renders() -> tuple[torch.Tensor, torch.Tensor]:
    """(renders float [1890, 3*32*32] in 0..255, their class ids [1890, 5]): every attribute combination."""
    combos = combinations(None)
    images = torch.stack([render(a) for a in combos]).reshape(len(combos), -1).float()
    return images, attribute_targets(combos)


def nearest_render_attributes(images: torch.Tensor) -> torch.Tensor:
    """Class ids [N, 5] of the exact render nearest to each uint8 image [N, 3, 32, 32] (squared pixel distance)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, 3, 32, 32], got {images.dtype} {tuple(images.shape)}")
    renders, ids = exact_renders()
    x = images.reshape(images.shape[0], -1).float()
    if x.shape[1] != renders.shape[1]:
        raise ValueError(f"images of shape {tuple(images.shape[1:])} do not match the demo's 3x32x32 renders")
    # ||x - r||^2 = ||x||^2 - 2 x.r + ||r||^2; ||x||^2 is the same for every r of a row
    d = renders.pow(2).sum(dim=1)[None, :] - 2.0 * x @ renders.T  # [N, 1890]
    return ids[d.argmin(dim=1)]


def classifier_attributes(images: torch.Tensor, classifier: object | None = None) -> torch.Tensor:
    """Class ids [N, 5] read by the demo classifier (the shipped weights unless ``classifier`` is given)."""
    if classifier is None:
        from bestckpt.demo.evaluators import DemoClassifier

        classifier = DemoClassifier()
    preds = classifier.predict_attributes(images)  # type: ignore[attr-defined]
    return torch.stack([preds[name] for name in ATTRIBUTE_NAMES], dim=1)


def prompt_accuracy(images: torch.Tensor, attrs_list: Sequence[Mapping[str, str]],
                    classifier: object | None = None) -> dict[str, dict[str, float]]:
    """Both measures for images [N, 3, 32, 32] generated for prompts with attributes ``attrs_list``:
    ``{"classifier": {...}, "nearest_render": {...}}``, each as :func:`accuracy` returns it."""
    if images.shape[0] != len(attrs_list):
        raise ValueError(f"got {images.shape[0]} images for {len(attrs_list)} prompts; give one image per prompt")
    target = attribute_targets(attrs_list)
    return {"classifier": accuracy(classifier_attributes(images, classifier), target),
            "nearest_render": accuracy(nearest_render_attributes(images), target)}


def format_accuracy(acc: Mapping[str, float]) -> str:
    """"all 0.87 (size 1.00, color 0.99, shape 0.91, position 1.00, background 1.00)"."""
    parts = ", ".join(f"{name} {acc[name]:.2f}" for name in ATTRIBUTE_NAMES if name in acc)
    return f"all {acc[ALL]:.2f} ({parts})" if ALL in acc else parts


def checkpoint_accuracy(checkpoint: str | Path, protocol: Any, *, num_prompts: int | None = None,
                        sampler: Any = None) -> dict[str, Any]:
    """Both accuracies of a demo checkpoint on the protocol's prompts (one image each, sample ``i`` with the
    protocol's seed ``i`` and sampler settings: the images its evaluation drew).

    Returns ``{"step", "num_prompts", "weights", "classifier": {...}, "nearest_render": {...}}``."""
    from bestckpt.demo.data import parse_caption
    from bestckpt.demo.sampler import DemoSampler

    n = len(protocol.prompts) if num_prompts is None else min(int(num_prompts), len(protocol.prompts))
    prompts = list(protocol.prompts[:n])
    batch = (sampler or DemoSampler())(Path(checkpoint), prompts, list(protocol.sample_seeds[:n]), protocol.sampler)
    acc = prompt_accuracy(batch.images, [parse_caption(p) for p in prompts])
    step = None
    with contextlib.suppress(Exception):  # the step is a label; a checkpoint without one is still measured
        step = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["step"])
    return {"step": step, "num_prompts": n, "weights": batch.weights, **acc}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (ties get their mean rank); NaN if either is
    constant or shorter than 2 (a correlation is then undefined, never made up)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equally long sequences, got {len(x)} and {len(y)}")

    def ranks(v: Sequence[float]) -> torch.Tensor:
        t = torch.tensor([float(a) for a in v], dtype=torch.float64)
        order = sorted(range(len(t)), key=lambda i: float(t[i]))
        r = torch.empty(len(t), dtype=torch.float64)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and t[order[j + 1]] == t[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")
