"""The FID Inception network (TensorFlow graph of 2015-12-05), written here, loading the standard weight file.

This is the network FID/IS/KID are defined with (pytorch-fid, torch-fidelity, TTUR) — never torchvision's classifier
Inception (``inception_v3_google-*.pth``): a different network, incomparable numbers. Its TF-specific details:
average pools that ignore padding, a max pool in the last block, BatchNorm eps 1e-3, 1008 classes, inputs scaled as
(x − 128)/128 after a TensorFlow-1 bilinear resize (``align_corners=False`` *without* half-pixel centres) to 299×299.

One forward pass yields the 2048-d pool3 features (FID, KID) and the 1008-class ``logits_unbiased`` (IS; the fc
layer without its bias, as torch-fidelity). Parameter names match the pytorch-fid / torch-fidelity state dicts, so
``pt_inception-2015-12-05-6726825d.pth`` and ``weights-inception-2015-12-05-6726825d.pth`` both load.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .images import check_uint8_images
from .weights import (
    INCEPTION_FID,
    WeightsError,
    WeightSpec,
    read_state_dict,
    resolve_weights,
    verify_weights,
)

__all__ = ["FIDInceptionV3", "InceptionBackbone", "resize_bilinear_tf1", "standard_factory", "INPUT_SIZE"]

logger = logging.getLogger(__name__)
INPUT_SIZE = 299


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)``: source = dst · (in/out), no half-pixel offset. x [N, C, H, W] float."""
    out = x
    for dim in (3, 2):  # width first, then height: the order TF (and torch-fidelity) use, for exact equality
        n_in = out.shape[dim]
        if n_in == size:
            continue
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=torch.float32) * scale  # float32 like TF's kernel
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        frac = (pos - lo.float()).to(out.dtype).to(out.device)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        a = out.index_select(dim, lo.to(out.device))
        b = out.index_select(dim, hi.to(out.device))
        out = a + (b - a) * frac.view(shape)
    return out


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool excludes the zero padding from the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Last blocks; ``max_pool`` selects the TF graph's max pool (Mixed_7c) instead of the average pool (Mixed_7b)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """x in [-1, 1], [N, 3, 299, 299] -> (pool [N, 2048], logits_unbiased [N, 1008])."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                      # [N, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # [N, 192, 35, 35]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                                    # ... -> [N, 2048, 8, 8]
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)                # [N, 2048]
        logits_unbiased = pool @ self.fc.weight.T                           # [N, 1008], no bias (torch-fidelity)
        return pool, logits_unbiased


class InceptionBackbone:
    """``features(uint8 [N, 3, H, W]) -> {"pool": float32 [N, 2048], "logits": float32 [N, 1008]}``."""

    feature_dim = 2048
    num_classes = 1008

    def __init__(self, net: FIDInceptionV3, name: str, device: torch.device, weights_id: str,
                 batch_size: int = 32) -> None:
        self.net = net.to(device).eval().requires_grad_(False)
        self.name = name
        self.device = device
        self.batch_size = batch_size
        #: identifies network + weights + layer + preprocessing (used in reference-statistics cache names)
        self.cache_id = f"{name}-{weights_id}-pool3-logits_unbiased-tf1bilinear{INPUT_SIZE}-uint8"

    @classmethod
    def from_file(cls, path: str | Path, name: str = "inception-2015-12-05", device: Any = "cpu",
                  spec: WeightSpec | None = None) -> InceptionBackbone:
        """Load from a weight file (verified against ``spec`` when given)."""
        path = Path(path)
        if spec is not None:
            verify_weights(path, spec)
        net = FIDInceptionV3()
        missing, unexpected = net.load_state_dict(read_state_dict(path), strict=False)
        if missing or unexpected:
            raise WeightsError(f"{path} is not an FID Inception state dict (missing {list(missing)[:3]}..., "
                               f"unexpected {list(unexpected)[:3]}...); use {INCEPTION_FID.filename}")
        return cls(net, name, torch.device(device), spec.sha256 if spec and spec.sha256 else path.name)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pool features and logits_unbiased of uint8 images [N, 3, H, W], batched by ``batch_size``."""
        check_uint8_images(images)
        pools, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start:start + self.batch_size].to(self.device, torch.float32)
            x = resize_bilinear_tf1(x, INPUT_SIZE)
            x = (x - 128.0) / 128.0
            pool, logit = self.net(x)
            pools.append(pool.float().cpu())
            logits.append(logit.float().cpu())
        if not pools:
            return {"pool": torch.empty(0, self.feature_dim), "logits": torch.empty(0, self.num_classes)}
        return {"pool": torch.cat(pools), "logits": torch.cat(logits)}


def standard_factory(weights_dir: Path | None, device: torch.device) -> InceptionBackbone:
    """Entry point ``inception-2015-12-05``: the FID Inception from its standard weight file."""
    path = resolve_weights(INCEPTION_FID, weights_dir)
    return InceptionBackbone.from_file(path, "inception-2015-12-05", device)
