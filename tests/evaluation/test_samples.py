"""Sample files: per-step folders, the guide's names, comparison layout, progress grid."""
from __future__ import annotations

from pathlib import Path

import torch

from bestckpt.evaluation.samples import (
    GRID_NAME,
    load_image_uint8,
    resize_uint8,
    write_evaluation_samples,
)
from bestckpt.fsio import TEMP_PREFIX


def _images(n: int, size: int, value: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(value)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_files_per_step_and_comparison_layout(tmp_path: Path) -> None:
    root = tmp_path / "evaluation_samples"
    ref = torch.zeros(3, 20, 30, dtype=torch.uint8)  # reference of another size: resized to 32x32
    ref[0] = 255  # pure red reference
    imgs = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    imgs[:, 2] = 255  # pure blue generated
    out = write_evaluation_samples(root, 2000, imgs, ["p0", "p1"], [ref, None])
    assert out == root / "0002000"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["eval_comparison_000.jpg", "eval_generated_000.jpg", "eval_generated_001.jpg",
                     "eval_prompt_000.txt", "eval_prompt_001.txt"]
    assert (out / "eval_prompt_001.txt").read_text().strip() == "p1"
    comp = load_image_uint8(out / "eval_comparison_000.jpg")
    assert comp.shape == (3, 32, 64)
    left, right = comp[:, :, :32].float().mean((1, 2)), comp[:, :, 32:].float().mean((1, 2))
    assert left[0] > 200 and left[2] < 60  # reference (red) on the left
    assert right[2] > 200 and right[0] < 60  # generated (blue) on the right
    # a later evaluation does not overwrite the earlier one
    write_evaluation_samples(root, 4000, _images(2, 32, 1), ["p0", "p1"])
    assert (root / "0002000" / "eval_generated_000.jpg").is_file()
    assert (root / "0004000" / "eval_generated_000.jpg").is_file()
    leftovers = [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.suffix == ".tmp"]
    assert leftovers == []  # every file published by an atomic rename


def test_progress_grid_rows_prompts_columns_steps(tmp_path: Path) -> None:
    root = tmp_path / "evaluation_samples"
    for k, step in enumerate((100, 200, 300)):
        write_evaluation_samples(root, step, _images(3, 16, k), ["a", "b", "c"])
    grid = load_image_uint8(root / GRID_NAME)
    cell, pad = 128, 2
    assert grid.shape == (3, pad + 3 * (cell + pad), pad + 3 * (cell + pad))  # 3 prompts x 3 steps


def test_resize_rounds_and_keeps_identity() -> None:
    x = _images(2, 10, 3)
    assert torch.equal(resize_uint8(x, (10, 10)), x)
    y = resize_uint8(x, (5, 7))
    assert y.dtype == torch.uint8 and y.shape == (2, 3, 5, 7)
    flat = torch.full((1, 3, 9, 9), 200, dtype=torch.uint8)
    assert torch.equal(resize_uint8(flat, (4, 4)), torch.full((1, 3, 4, 4), 200, dtype=torch.uint8))


def test_writes_use_unique_temporaries_not_fixed_tmp_names(tmp_path: Path) -> None:
    """A leftover (here: a directory) at the old fixed name ``<file>.tmp`` no longer blocks a write."""
    root = tmp_path / "evaluation_samples"
    out = root / "0000100"
    for name in ("eval_generated_000.jpg.tmp", "eval_prompt_000.txt.tmp"):
        (out / name).mkdir(parents=True)
    write_evaluation_samples(root, 100, _images(1, 16, 0), ["a"], update_grid=False)
    assert (out / "eval_prompt_000.txt").read_text(encoding="utf-8") == "a\n"
    assert load_image_uint8(out / "eval_generated_000.jpg").shape == (3, 16, 16)
