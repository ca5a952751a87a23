"""Demo evaluators: small networks trained on the demo's synthetic captioned shapes, shipped with the package.

They let `bestckpt demo` compute real FID/KID/IS, CLIP score and LPIPS offline. **They are for the demo data
only** (32x32 shapes from `bestckpt.demo.data`); on any other images their numbers mean nothing. Real runs use the
standard backbones (Inception, CLIP ViT-B/32, LPIPS-alex), which stay the defaults.

- ``demo-classifier`` (kind "inception"): a 6-conv CNN (16/32/64 channels, coordinate input channels) predicting
  the five caption attributes, one linear head each. ``features(images)`` gives ``pool`` [N, 128] (global average
  and max of the last conv stage, for FID/KID) and ``logits`` [N, 35] over the joint (shape, colour) classes,
  log p(shape) + log p(colour) of the two heads. IS is meaningful with these logits: it is high when each image is
  confidently one coloured shape (sharp p(y|x)) and the set covers all 35 shape/colour pairs (flat p(y)); its
  ceiling is 35.
- ``demo-clip`` (kind "clip"): a small CNN image encoder and a 2-layer transformer text encoder over
  `bestckpt.demo.data.Tokenizer`, trained contrastively (CLIP's symmetric InfoNCE) on (image, caption) pairs;
  ``encode_images`` / ``encode_texts`` return L2-normalised 64-d embeddings.
- ``demo-lpips`` (kind "lpips"): LPIPS's form on the demo classifier's three conv stages: channel-unit-normalised
  activations, squared differences weighted by non-negative per-channel weights, spatial mean, summed over stages.

Weights are ``bestckpt/demo/weights/{demo-classifier,demo-clip,demo-lpips}.pt``; their sha256 are recorded in
``manifest.json`` there and verified at load (`DemoWeightsError` when a file is missing or does not match).
Training recipe and measured quality: ``docs/demo-evaluators.md`` and ``scripts/train_demo_evaluators.py``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bestckpt.backbones.images import check_uint8_images
from bestckpt.demo.data import ATTRIBUTE_NAMES, ATTRIBUTES, IMAGE_SIZE, Tokenizer
from bestckpt.errors import DemoWeightsError
from bestckpt.fsio import atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "DEMO_BACKBONES",
    "DemoClassifier",
    "DemoClassifierNet",
    "DemoClip",
    "DemoClipNet",
    "DemoLpips",
    "DemoWeightsError",
    "ImageTrunk",
    "WEIGHT_FILES",
    "build_demo_backbone",
    "load_weights_file",
    "preprocess",
    "demo_classifier",
    "demo_clip",
    "demo_lpips",
    "verify_weights",
    "write_manifest",
]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
#: backbone name -> weight file; demo-lpips also needs the classifier's file (its feature network).
WEIGHT_FILES: dict[str, str] = {
    "demo-classifier": "demo-classifier.pt",
    "demo-clip": "demo-clip.pt",
    "demo-lpips": "demo-lpips.pt",
}
#: backbone name -> kind in `bestckpt.backbones`
DEMO_BACKBONES: dict[str, str] = {"demo-classifier": "inception", "demo-clip": "clip", "demo-lpips": "lpips"}
_BATCH = 256  # images per forward pass: bounds memory for large evaluation sets


# ------------------------------------------------------------------------------------------ networks

def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] (0..255) -> float32 [N, 3, 32, 32] in [-1, 1] (the DiT's pixel space).

    Other sizes are resized with antialiased bilinear interpolation, since the nets were trained at 32x32.
    Outputs of all demo backbones are float32 on the CPU, like the standard backbones'; N = 0 (an empty
    distributed shard) gives empty outputs.
    """
    check_uint8_images(images, "demo evaluator images", error=TypeError, shape_error=ValueError,
                       hint="; convert [-1, 1] floats with ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)")
    x = images.float() / 127.5 - 1.0
    if x.shape[0] and x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def _coords(x: torch.Tensor) -> torch.Tensor:
    """Append x and y coordinate channels in [-1, 1] ([N, 3, H, W] -> [N, 5, H, W]).

    Why: the caption states a position on a 3x3 grid; with coordinate channels (CoordConv) a globally
    average-pooled feature can still encode where the shape is.
    """
    n, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


class ImageTrunk(nn.Module):
    """Three stages of (conv3x3-BN-ReLU) x 2 with 2x2 max-pooling between them.

    [N, 3, 32, 32] in [-1, 1] -> stage activations [N, w0, 32, 32], [N, w1, 16, 16], [N, w2, 8, 8];
    `pool` concatenates the global average and the global max of the last stage, [N, 2 * w2]: the max keeps
    a small shape's evidence that an average over a mostly-background map would dilute.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        stages = []
        c_in = 5  # RGB + 2 coordinate channels
        for w in self.widths:
            stages.append(nn.Sequential(
                nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            ))
            c_in = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _coords(x)
        acts = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            acts.append(x)
        return acts

    @staticmethod
    def pool(acts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([acts[-1].mean(dim=(2, 3)), acts[-1].amax(dim=(2, 3))], dim=1)


class DemoClassifierNet(nn.Module):
    """Attribute classifier: trunk -> pooled [N, 128] -> one linear head per attribute (logits [N, n_values])."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.trunk = ImageTrunk(widths)
        d = 2 * self.trunk.widths[-1]
        self.heads = nn.ModuleDict({name: nn.Linear(d, len(ATTRIBUTES[name])) for name in ATTRIBUTE_NAMES})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pool = ImageTrunk.pool(self.trunk(x))
        return pool, {name: head(pool) for name, head in self.heads.items()}

    @staticmethod
    def joint_logits(heads: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, 35] log p(shape) + log p(colour), flattened shape-major (index = shape * 7 + colour)."""
        ls = F.log_softmax(heads["shape"], dim=1)
        lc = F.log_softmax(heads["color"], dim=1)
        return (ls[:, :, None] + lc[:, None, :]).flatten(1)


class TextEncoder(nn.Module):
    """Token ids [N, L] -> [N, dim]: token + position embeddings, pre-norm transformer, mean over non-pad tokens."""

    def __init__(self, vocab_size: int, max_length: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == Tokenizer.PAD  # [N, L]
        pad = pad & ~pad.all(dim=1, keepdim=True)  # an empty text attends to its pad tokens rather than to nothing
        h = self.encoder(self.tok(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.norm((h * keep).sum(dim=1) / keep.sum(dim=1))


class DemoClipNet(nn.Module):
    """CLIP-style pair: image trunk (16/32/64, pool [N, 128]) -> linear to `embed`; text encoder -> linear."""

    def __init__(self, vocab_size: int, max_length: int, widths: Sequence[int] = (16, 32, 64), embed: int = 64,
                 text_dim: int = 64):
        super().__init__()
        self.trunk = ImageTrunk(widths)
        self.image_proj = nn.Linear(2 * self.trunk.widths[-1], embed)
        self.text = TextEncoder(vocab_size, max_length, text_dim)
        self.text_proj = nn.Linear(text_dim, embed)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as in CLIP

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(ImageTrunk.pool(self.trunk(x))), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)


# -------------------------------------------------------------------------------------- weight files

def write_manifest(weights_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Record sha256 and size of every demo weight file present in `weights_dir` (atomic write)."""
    weights_dir = Path(weights_dir)
    files = {}
    for fname in sorted(set(WEIGHT_FILES.values())):
        p = weights_dir / fname
        if p.exists():
            files[fname] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    doc = {"files": files, **(extra or {})}
    atomic_write_text(weights_dir / MANIFEST, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return weights_dir / MANIFEST


def verify_weights(weights_dir: Path, fname: str) -> Path:
    """Path of `fname` in `weights_dir` after checking its sha256 against the manifest; raises DemoWeightsError."""
    weights_dir = Path(weights_dir)
    fix = ("reinstall bestckpt (the files ship in bestckpt/demo/weights/) or regenerate them with "
           "`python scripts/train_demo_evaluators.py`")
    manifest_path = weights_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][fname]["sha256"]
    except FileNotFoundError:
        raise DemoWeightsError(f"demo evaluator manifest {manifest_path} is missing; {fix}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DemoWeightsError(f"demo evaluator manifest {manifest_path} has no valid sha256 for {fname} "
                               f"({type(exc).__name__}: {exc}); {fix}") from None
    path = weights_dir / fname
    if not path.is_file():
        raise DemoWeightsError(f"demo evaluator weights {path} are missing; {fix}")
    actual = sha256_file(path)
    if actual != expected:
        raise DemoWeightsError(f"demo evaluator weights {path} are corrupt: sha256 {actual} but the manifest "
                               f"records {expected}; {fix}")
    return path


def load_weights_file(weights_dir: Path, fname: str) -> dict[str, Any]:
    """Verified, loaded payload {"arch": {...}, "state_dict": {...}, ...}; tensors are upcast to float32."""
    path = verify_weights(weights_dir, fname)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["state_dict"] = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    return payload


def _resolve_dir(weights_dir: str | os.PathLike | None) -> Path:
    """The shipped weights, unless `weights_dir` holds a demo manifest (e.g. freshly trained or test copies).

    Why not always `weights_dir`: callers pass one weights_dir for all backbones (the standard ones' cache);
    the demo files are looked for there only when it is a demo weights folder.
    """
    if weights_dir is not None and (Path(weights_dir) / MANIFEST).is_file():
        return Path(weights_dir)
    return DEFAULT_WEIGHTS_DIR


# ------------------------------------------------------------------------------------------ backbones

class _DemoBackbone:
    kind: str
    name: str

    def __init__(self, weights_dir: Path, device: str | torch.device):
        self.weights_dir = Path(weights_dir)
        self.device = torch.device(device)
        # id for reference-statistics caches: the name and the weights' sha256 (preprocessing and layers are fixed
        # by the name); read from the manifest, which load_weights_file has checked against the files
        manifest = json.loads((self.weights_dir / MANIFEST).read_text())
        shas = [manifest["files"][f]["sha256"][:16] for f in self._files()]
        self.cache_id = f"{self.name}-{'-'.join(shas)}"

    def _files(self) -> list[str]:
        return [WEIGHT_FILES[self.name]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights_dir={str(self.weights_dir)!r}, device={str(self.device)!r})"


def _load_classifier(weights_dir: Path) -> DemoClassifierNet:
    payload = load_weights_file(weights_dir, WEIGHT_FILES["demo-classifier"])
    net = DemoClassifierNet(**payload["arch"])
    net.load_state_dict(payload["state_dict"])
    return net.eval()


class DemoClassifier(_DemoBackbone):
    """kind "inception": features(images uint8 [N,3,H,W]) -> {"pool": [N, 128], "logits": [N, 35]} (float32)."""

    kind, name = "inception", "demo-classifier"

    def __init__(self, weights_dir: Path = DEFAULT_WEIGHTS_DIR, device: str | torch.device = "cpu"):
        self.net = _load_classifier(Path(weights_dir)).to(device)
        super().__init__(weights_dir, device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = preprocess(images)
        pools = [torch.empty(0, 2 * self.net.trunk.widths[-1])]
        logits = [torch.empty(0, len(ATTRIBUTES["shape"]) * len(ATTRIBUTES["color"]))]
        for chunk in x.split(_BATCH):
            pool, heads = self.net(chunk.to(self.device))
            pools.append(pool.float().cpu())
            logits.append(DemoClassifierNet.joint_logits(heads).float().cpu())
        return {"pool": torch.cat(pools), "logits": torch.cat(logits)}

    @torch.no_grad()
    def predict_attributes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class index per attribute: name -> int64 [N] (for accuracy checks and reports)."""
        x = preprocess(images)
        preds: dict[str, list[torch.Tensor]] = {name: [torch.empty(0, dtype=torch.long)] for name in ATTRIBUTE_NAMES}
        for chunk in x.split(_BATCH):
            _, heads = self.net(chunk.to(self.device))
            for name in ATTRIBUTE_NAMES:
                preds[name].append(heads[name].argmax(dim=1).cpu())
        return {name: torch.cat(v) for name, v in preds.items()}


class DemoClip(_DemoBackbone):
    """kind "clip": encode_images(uint8 [N,3,H,W]) -> [N, 64]; encode_texts(list[str]) -> [N, 64]; L2-normalised."""

    kind, name = "clip", "demo-clip"

    def __init__(self, weights_dir: Path = DEFAULT_WEIGHTS_DIR, device: str | torch.device = "cpu"):
        payload = load_weights_file(Path(weights_dir), WEIGHT_FILES["demo-clip"])
        super().__init__(weights_dir, device)
        self.tokenizer = Tokenizer(payload["arch"]["max_length"])
        if payload["arch"]["vocab_size"] != self.tokenizer.vocab_size:
            raise DemoWeightsError(f"demo-clip weights in {self.weights_dir} were trained with a vocabulary of "
                                   f"{payload['arch']['vocab_size']} words, this version has "
                                   f"{self.tokenizer.vocab_size}; retrain with scripts/train_demo_evaluators.py")
        self.net = DemoClipNet(**payload["arch"])
        self.net.load_state_dict(payload["state_dict"])
        self.net.eval().to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images)
        return torch.cat([self._empty()] + [self.net.encode_image(c.to(self.device)).float().cpu()
                                            for c in x.split(_BATCH)])

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, self.net.image_proj.out_features)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise ValueError(f"encode_texts takes a list of strings, got the string {texts!r}; pass [{texts!r}]")
        ids = self.tokenizer.encode(list(texts))
        return torch.cat([self._empty()] + [self.net.encode_text(c.to(self.device)).float().cpu()
                                            for c in ids.split(_BATCH)])


class DemoLpips(_DemoBackbone):
    """kind "lpips": distance(a, b) uint8 [N,3,H,W] each -> [N] (0 for identical images, larger = more different)."""

    kind, name = "lpips", "demo-lpips"

    def __init__(self, weights_dir: Path = DEFAULT_WEIGHTS_DIR, device: str | torch.device = "cpu"):
        payload = load_weights_file(Path(weights_dir), WEIGHT_FILES["demo-lpips"])
        trunk = _load_classifier(Path(weights_dir)).trunk
        super().__init__(weights_dir, device)
        sd = payload["state_dict"]
        self.lin = [sd[f"lin{i}"].clamp_min(0.0).to(self.device) for i in range(len(sd))]
        self.trunk = trunk.to(self.device)
        widths = [int(w.numel()) for w in self.lin]
        if widths != list(self.trunk.widths):
            raise DemoWeightsError(f"demo-lpips weights have layer widths {widths} but the demo classifier has "
                                   f"{list(self.trunk.widths)}; retrain with scripts/train_demo_evaluators.py")

    def _files(self) -> list[str]:
        return [WEIGHT_FILES["demo-lpips"], WEIGHT_FILES["demo-classifier"]]

    @torch.no_grad()
    def distance(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        from bestckpt.metrics.lpips import lpips_from_features

        if images_a.shape[0] != images_b.shape[0]:
            raise ValueError(f"distance pairs images row by row: got {images_a.shape[0]} and {images_b.shape[0]} "
                             "images; pass the same number of each")
        xa, xb = preprocess(images_a), preprocess(images_b)  # both resized to 32x32
        out = [torch.empty(0)]
        for ca, cb in zip(xa.split(_BATCH), xb.split(_BATCH)):
            fa = self.trunk(ca.to(self.device))
            fb = self.trunk(cb.to(self.device))
            out.append(lpips_from_features(fa, fb, self.lin).float().cpu())
        return torch.cat(out)


_CLASSES = {"demo-classifier": DemoClassifier, "demo-clip": DemoClip, "demo-lpips": DemoLpips}


def build_demo_backbone(name: str, *, weights_dir: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", **_: Any) -> _DemoBackbone:
    """Build one demo evaluator (weights verified). `weights_dir`: see `_resolve_dir`."""
    if name not in _CLASSES:
        raise ValueError(f"unknown demo evaluator {name!r}; choose one of {sorted(_CLASSES)}")
    return _CLASSES[name](_resolve_dir(weights_dir), device)


def _factory(name: str):
    """`bestckpt.backbones` factory signature: factory(weights_dir: Path | None, device: torch.device)."""

    def factory(weights_dir: Path | None, device: torch.device) -> _DemoBackbone:
        return build_demo_backbone(name, weights_dir=weights_dir, device=device)

    factory.__name__ = f"demo_factory_{name.replace('-', '_')}"
    return factory


#: Entry points ``demo-classifier``, ``demo-clip``, ``demo-lpips`` (declared in pyproject.toml).
demo_classifier = _factory("demo-classifier")
demo_clip = _factory("demo-clip")
demo_lpips = _factory("demo-lpips")
