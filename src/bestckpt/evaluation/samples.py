"""Evaluation sample files: the guide's files, kept per step, plus a progress grid.

Layout under ``<experiment>/evaluation_samples/``::

    0002000/eval_generated_000.jpg   generated image of prompt 0 (same seed at every step)
    0002000/eval_comparison_000.jpg  reference (resized to the generated size) left, generated right
    0002000/eval_prompt_000.txt      the prompt
    progress_grid.jpg                rows: prompts, columns: evaluated steps (same prompt and noise)

Per-step folders keep earlier evaluations (the guide overwrote them). These JPEGs are for people;
metrics are always computed on the in-memory uint8 tensors, never on JPEG round-trips (JPEG alone
shifts FID). Every file is written atomically (:mod:`bestckpt.fsio`) so a reader never sees half a file.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from bestckpt.backbones.images import check_uint8_images
from bestckpt.fsio import atomic_write_bytes, atomic_write_text

__all__ = [
    "GRID_NAME",
    "load_image_uint8",
    "resize_uint8",
    "step_dir",
    "write_evaluation_samples",
    "write_progress_grid",
]

logger = logging.getLogger(__name__)

GRID_NAME = "progress_grid.jpg"
_STEP_DIR = re.compile(r"^\d{7,}$")
_GEN = re.compile(r"^eval_generated_(\d{3,})\.jpg$")


def step_dir(samples_root: str | Path, step: int) -> Path:
    """Folder of one evaluation's samples: ``samples_root/{step:07d}``."""
    return Path(samples_root) / f"{int(step):07d}"


def load_image_uint8(path: str | Path) -> torch.Tensor:
    """Read an image file as RGB ``uint8 Tensor[3, H, W]`` (alpha dropped, greyscale expanded)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.view(im.height, im.width, 3).permute(2, 0, 1).contiguous()


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``uint8 Tensor[N, 3, H, W]`` (or ``[3, H, W]``) to ``size`` = (H, W).

    Bilinear with antialias in float, then clamp and *round* back to uint8 (truncation would bias
    every pixel down by half a level).
    """
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    if tuple(x.shape[-2:]) != tuple(size):
        y = torch.nn.functional.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True,
                                            align_corners=False)
        x = y.clamp(0, 255).round().to(torch.uint8)
    return x[0] if single else x


def _save_jpeg(image: torch.Tensor, path: Path, quality: int = 95) -> None:
    from PIL import Image

    arr = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue(), durable=False)


def write_evaluation_samples(
    samples_root: str | Path,
    step: int,
    images: torch.Tensor,
    prompts: Sequence[str],
    references: Sequence[torch.Tensor | None] | None = None,
    *,
    update_grid: bool = True,
) -> Path:
    """Write the guide's sample files for one evaluation and refresh the progress grid.

    images: uint8 ``Tensor[K, 3, H, W]``; prompts: K strings; references: K uint8 ``Tensor[3, h, w]``
    or None (no comparison image for that index). Returns the step folder.
    """
    check_uint8_images(images)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
    if references is not None and len(references) != images.shape[0]:
        raise ValueError(f"{len(references)} references for {images.shape[0]} images")
    out = step_dir(samples_root, step)
    out.mkdir(parents=True, exist_ok=True)
    h, w = images.shape[2], images.shape[3]
    for i in range(images.shape[0]):
        _save_jpeg(images[i], out / f"eval_generated_{i:03d}.jpg")
        atomic_write_text(out / f"eval_prompt_{i:03d}.txt", prompts[i] + "\n", durable=False)
        ref = None if references is None else references[i]
        if ref is not None:
            ref = resize_uint8(ref, (h, w))
            _save_jpeg(torch.cat([ref, images[i]], dim=2), out / f"eval_comparison_{i:03d}.jpg")
    if update_grid:
        try:
            write_progress_grid(samples_root)
        except Exception:  # the grid is a convenience; never fail an evaluation for it
            logger.exception("could not update the progress grid in %s", samples_root)
    return out


def write_progress_grid(
    samples_root: str | Path, *, max_prompts: int = 8, max_steps: int = 12, cell: int = 128
) -> Path | None:
    """Rows: the first ``max_prompts`` prompts; columns: the latest ``max_steps`` evaluated steps.

    Each cell is the same prompt with the same noise, so the row shows what training changed.
    Returns the grid path, or None when there is nothing to show yet.
    """
    from torchvision.utils import make_grid

    root = Path(samples_root)
    steps = sorted((d for d in root.iterdir() if d.is_dir() and _STEP_DIR.match(d.name)), key=lambda d: int(d.name))
    steps = steps[-max_steps:]
    if not steps:
        return None
    indices: set[int] = set()
    for d in steps:
        for f in d.iterdir():
            m = _GEN.match(f.name)
            if m:
                indices.add(int(m.group(1)))
    rows = sorted(indices)[:max_prompts]
    if not rows:
        return None
    blank = torch.full((3, cell, cell), 32, dtype=torch.uint8)
    tiles = []
    for i in rows:
        for d in steps:
            f = d / f"eval_generated_{i:03d}.jpg"
            tiles.append(resize_uint8(load_image_uint8(f), (cell, cell)) if f.is_file() else blank)
    grid = make_grid(torch.stack(tiles), nrow=len(steps), padding=2, pad_value=255)
    path = root / GRID_NAME
    _save_jpeg(grid, path)
    return path
