"""LPIPS (Zhang et al. 2018, v0.1): AlexNet by default, VGG16 selectable, computed like the ``lpips`` package.

Pipeline for uint8 images: x/127.5 − 1 ∈ [-1, 1] → scaling layer ((x − shift)/scale) → the backbone's five ReLU
stages → :func:`bestckpt.metrics.lpips_from_features` with the published v0.1 linear weights.

Weights:
- backbone: torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` found like every weight file
  (:mod:`bestckpt.backbones.weights`; only the ``features.*`` part is used);
- linear layers (6–11 KB): ``lpips_v0.1_{alex,vgg}.pth`` in the weights folders, else the copies shipped inside the
  ``lpips`` or ``torchmetrics`` wheels (found on disk without importing them). So neither package is a hard runtime
  dependency: install one of them (torchmetrics is a common one) or put the file in the weights dir.

If the two images of a pair differ in size, the second is resized (bilinear, antialiased) to the first's size —
explicitly, never silently mismatched (a defect of the original).
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.lpips import lpips_from_features
from .images import check_uint8_images
from .weights import (
    ALEXNET,
    VGG16,
    WeightsError,
    WeightSpec,
    read_state_dict,
    resolve_weights,
    search_dirs,
)

__all__ = ["LpipsBackbone", "LPIPS_NETS", "find_lin_weights", "build_features", "lpips_alex", "lpips_vgg"]

logger = logging.getLogger(__name__)

# net -> (backbone weight spec, indices in torchvision's .features after which a slice ends, channels per slice)
LPIPS_NETS: dict[str, tuple[WeightSpec, tuple[int, ...], tuple[int, ...]]] = {
    "alex": (ALEXNET, (2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
    "vgg": (VGG16, (4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),
}
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def build_features(net: str) -> nn.Sequential:
    """torchvision's ``.features`` of AlexNet / VGG16, untrained (weights are loaded separately)."""
    from torchvision import models

    if net == "alex":
        return models.alexnet(weights=None).features
    if net == "vgg":
        return models.vgg16(weights=None).features
    raise ValueError(f"unknown LPIPS net {net!r}; use one of {sorted(LPIPS_NETS)}")


def find_lin_weights(net: str, weights_dir: Path | None = None) -> Path:
    """Path of the v0.1 linear-layer file for ``net`` (weights folders, then the lpips / torchmetrics wheels)."""
    candidates = [d / f"lpips_v0.1_{net}.pth" for d in search_dirs(weights_dir)]
    for package, rel in (("lpips", ("weights", "v0.1")), ("torchmetrics", ("functional", "image", "lpips_models"))):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.append(Path(loc).joinpath(*rel, f"{net}.pth"))
    for c in candidates:
        if c.is_file():
            return c
    raise WeightsError(
        f"LPIPS v0.1 linear weights for {net!r} not found (looked in {[str(c) for c in candidates]}). To fix: "
        f"`pip install lpips` or `pip install torchmetrics` (both ship them), or copy {net}.pth from the lpips "
        f"package (github.com/richzhang/PerceptualSimilarity, lpips/weights/v0.1/) to a weights folder as "
        f"lpips_v0.1_{net}.pth"
    )


def _read_lin(path: Path, channels: tuple[int, ...]) -> list[torch.Tensor]:
    state = read_state_dict(path, fix="replace the file")
    try:
        lins = [state[f"lin{i}.model.1.weight"].reshape(-1).float() for i in range(len(channels))]
    except Exception as exc:
        raise WeightsError(f"cannot read LPIPS linear weights from {path}: {exc}; replace the file") from exc
    if tuple(w.numel() for w in lins) != channels:
        raise WeightsError(f"{path} has channels {[w.numel() for w in lins]}, expected {list(channels)}: wrong net")
    return lins


class LpipsBackbone:
    """``distance(uint8 [N,3,H,W], uint8 [N,3,H',W']) -> Tensor[N]`` (float32)."""

    def __init__(self, net: str, features: nn.Sequential, lin_weights: list[torch.Tensor], name: str,
                 device: torch.device, batch_size: int = 32) -> None:
        self.net_type = net
        self.features = features.to(device).eval().requires_grad_(False)
        self.slice_ends = LPIPS_NETS[net][1]
        self.lin_weights = [w.to(device) for w in lin_weights]
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.cache_id = f"{name}-v0.1"

    @classmethod
    def from_files(cls, net: str, backbone_path: Path, lin_path: Path, name: str | None = None,
                   device: Any = "cpu") -> LpipsBackbone:
        """Load torchvision backbone weights (``features.*`` keys) and the lpips lin file."""
        feats = build_features(net)
        state = read_state_dict(backbone_path)
        sub = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing, _ = feats.load_state_dict(sub, strict=False)
        if missing:
            raise WeightsError(f"{backbone_path} lacks {net} features weights {missing[:3]}...; use "
                               f"{LPIPS_NETS[net][0].filename}")
        lins = _read_lin(lin_path, LPIPS_NETS[net][2])
        return cls(net, feats, lins, name or f"lpips-{net}", torch.device(device))

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.slice_ends:
            for i in range(start, end):
                x = self.features[i](x)
            outs.append(x)
            start = end
        return outs

    @torch.inference_mode()
    def distance(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images_a, "images_a")
        check_uint8_images(images_b, "images_b")
        if images_a.shape[0] != images_b.shape[0]:
            raise ValueError(f"LPIPS pairs image i with reference i: got {images_a.shape[0]} images and "
                             f"{images_b.shape[0]} references; drop unpaired images before calling")
        out = []
        for s in range(0, images_a.shape[0], self.batch_size):
            a = images_a[s:s + self.batch_size].to(self.device, torch.float32) / 127.5 - 1.0
            b = images_b[s:s + self.batch_size].to(self.device, torch.float32) / 127.5 - 1.0
            if b.shape[-2:] != a.shape[-2:]:
                logger.debug("LPIPS: resizing references %s to %s", tuple(b.shape[-2:]), tuple(a.shape[-2:]))
                b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            shift, scale = _SHIFT.to(a), _SCALE.to(a)
            fa, fb = self._stages((a - shift) / scale), self._stages((b - shift) / scale)
            out.append(lpips_from_features(fa, fb, self.lin_weights).float().cpu())
        return torch.cat(out) if out else torch.empty(0)


def _standard(net: str) -> Callable[[Path | None, torch.device], LpipsBackbone]:
    def factory(weights_dir: Path | None, device: torch.device) -> LpipsBackbone:
        backbone = resolve_weights(LPIPS_NETS[net][0], weights_dir)
        return LpipsBackbone.from_files(net, backbone, find_lin_weights(net, weights_dir), f"lpips-{net}", device)
    factory.__name__ = f"lpips_{net}"
    return factory


#: Entry points ``lpips-alex`` and ``lpips-vgg``.
lpips_alex = _standard("alex")
lpips_vgg = _standard("vgg")
