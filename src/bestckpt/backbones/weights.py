"""Finding and verifying the weight files of the standard backbones — offline first, download only when asked.

Search order for a file (first hit wins, the name or any alias matches):

1. the explicit ``weights_dir`` argument;
2. ``$BESTCKPT_WEIGHTS_DIR``;
3. ``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``),
   where torch.hub, torchvision, pytorch-fid and torch-fidelity keep their downloads;
4. ``~/.cache/clip`` (OpenAI CLIP's download folder).

Hugging Face models are found in the Hugging Face cache by ``transformers`` itself (``local_files_only=True``).

Verification: the size must be at least ``min_bytes`` (catches truncated downloads cheaply) and the sha256 must start
with the known prefix (full digest for OpenAI CLIP, the 8-hex prefix in torchvision/pytorch-fid file names). A
missing or wrong file raises :class:`WeightsError` naming the file, the expected checksum, the folders searched and
the URL to get it. Nothing is ever downloaded unless ``BESTCKPT_ALLOW_DOWNLOAD=1`` is set (or ``allow_download=True``
is passed); tests never set it. ``BESTCKPT_VERIFY_WEIGHTS=0`` skips the checksum (not the size) for users with a
re-encoded but trusted copy; a warning is logged.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bestckpt.errors import WeightsError
from bestckpt.fsio import sha256_file

__all__ = [
    "WeightSpec", "WeightsError", "resolve_weights", "verify_weights", "read_state_dict", "search_dirs",
    "torch_hub_checkpoints_dir",
    "INCEPTION_FID", "ALEXNET", "VGG16", "CLIP_VIT_B_32", "CLIP_VIT_L_14", "KNOWN_WEIGHTS",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSpec:
    """A weight file: canonical name, accepted aliases, checksum (prefix), minimal size, where to get it."""

    filename: str
    sha256: str | None
    url: str | None
    min_bytes: int = 0
    aliases: tuple[str, ...] = ()
    description: str = ""
    download_subdir: str = "torch"  # "torch" -> $TORCH_HOME/hub/checkpoints, "clip" -> ~/.cache/clip

    @property
    def names(self) -> tuple[str, ...]:
        return (self.filename, *self.aliases)


INCEPTION_FID = WeightSpec(
    "pt_inception-2015-12-05-6726825d.pth", "6726825d",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    min_bytes=80_000_000, aliases=("weights-inception-2015-12-05-6726825d.pth",),
    description="FID Inception (TF 2015-12-05 graph, as pytorch-fid / torch-fidelity)",
)
ALEXNET = WeightSpec(
    "alexnet-owt-7be5be79.pth", "7be5be79", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    min_bytes=200_000_000, description="torchvision AlexNet (LPIPS-alex backbone)",
)
VGG16 = WeightSpec(
    "vgg16-397923af.pth", "397923af", "https://download.pytorch.org/models/vgg16-397923af.pth",
    min_bytes=500_000_000, description="torchvision VGG16 (LPIPS-vgg backbone)",
)
CLIP_VIT_B_32 = WeightSpec(
    "ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    min_bytes=300_000_000, description="OpenAI CLIP ViT-B/32", download_subdir="clip",
)
CLIP_VIT_L_14 = WeightSpec(
    "ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    min_bytes=800_000_000, description="OpenAI CLIP ViT-L/14", download_subdir="clip",
)
KNOWN_WEIGHTS = {s.filename: s for s in (INCEPTION_FID, ALEXNET, VGG16, CLIP_VIT_B_32, CLIP_VIT_L_14)}


def torch_hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` with torch.hub's defaults, computed without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def _clip_cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "clip"


def search_dirs(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched, in order (see the module docstring)."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir).expanduser())
    env = os.environ.get("BESTCKPT_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [torch_hub_checkpoints_dir(), _clip_cache_dir()]
    return dirs


def _where_to_get(spec: WeightSpec) -> str:
    target = torch_hub_checkpoints_dir() if spec.download_subdir == "torch" else _clip_cache_dir()
    src = f"download {spec.url}" if spec.url else "obtain it from its publisher"
    return (f"{src} into {target} (or any folder passed as weights_dir / $BESTCKPT_WEIGHTS_DIR), "
            f"or set BESTCKPT_ALLOW_DOWNLOAD=1 to let bestckpt download it once")


def verify_weights(path: Path, spec: WeightSpec) -> Path:
    """Check size and sha256 prefix of ``path`` against ``spec``; raise :class:`WeightsError` on mismatch."""
    size = path.stat().st_size
    if size < spec.min_bytes:
        raise WeightsError(
            f"weight file {path} ({spec.description or spec.filename}) is {size} bytes, expected at least "
            f"{spec.min_bytes} (sha256 {spec.sha256 or 'unknown'}...): truncated or wrong file. Delete it and "
            f"{_where_to_get(spec)}."
        )
    if spec.sha256:
        if os.environ.get("BESTCKPT_VERIFY_WEIGHTS", "1") == "0":
            logger.warning("BESTCKPT_VERIFY_WEIGHTS=0: not checking the sha256 of %s", path)
            return path
        digest = sha256_file(path)
        if not digest.startswith(spec.sha256):
            raise WeightsError(
                f"weight file {path} ({spec.description or spec.filename}) has sha256 {digest[:16]}..., expected "
                f"{spec.sha256}...: corrupted or a different network (never substitute other weights, numbers would "
                f"not be comparable). Delete it and {_where_to_get(spec)}; if this is a trusted re-encoding, set "
                f"BESTCKPT_VERIFY_WEIGHTS=0."
            )
    return path


def resolve_weights(
    spec: WeightSpec,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool | None = None,
    verify: bool = True,
) -> Path:
    """Path of a verified copy of ``spec``'s file; download only when allowed (argument or env var)."""
    dirs = search_dirs(weights_dir)
    for d in dirs:
        for name in spec.names:
            p = d / name
            if p.is_file():
                logger.debug("found %s at %s", spec.filename, p)
                return verify_weights(p, spec) if verify else p
    if allow_download is None:
        allow_download = os.environ.get("BESTCKPT_ALLOW_DOWNLOAD", "0") == "1"
    if allow_download and spec.url:
        target_dir = torch_hub_checkpoints_dir() if spec.download_subdir == "torch" else _clip_cache_dir()
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / spec.filename
        logger.warning("downloading %s from %s to %s (allowed by the user)", spec.filename, spec.url, target)
        from torch.hub import (
            download_url_to_file,  # lazy: only here do we need torch.hub
        )

        download_url_to_file(spec.url, str(target), progress=False)
        return verify_weights(target, spec) if verify else target
    raise WeightsError(
        f"weight file {spec.filename} ({spec.description or 'backbone weights'}; sha256 {spec.sha256 or 'unknown'}"
        f"{'...' if spec.sha256 and len(spec.sha256) < 64 else ''}) not found in "
        f"{', '.join(str(d) for d in dirs)}. To fix: {_where_to_get(spec)}."
    )


def read_state_dict(path: str | os.PathLike[str], fix: str = "delete it and fetch it again") -> Any:
    """The state dict saved in a weight file (unwrapped from ``{"state_dict": ...}``), loaded on the CPU.

    Read with ``weights_only=True``, so a file never runs code. A file torch cannot read (truncated, not a torch
    file) raises :class:`WeightsError` naming the file and ``fix``.
    """
    import torch  # lazy: finding and verifying weights needs no torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable pickle / zip: the file is corrupted
        raise WeightsError(f"cannot read weight file {path}: {exc}; {fix}") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state
