"""Fixtures shared by the sink tests."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Offline W&B confined to ``tmp_path/wandb_root`` (no network, no user settings or credentials read)."""
    wandb = pytest.importorskip("wandb")
    from wandb_offline import CLEARED, offline_env

    root = tmp_path / "wandb_root"
    for key in CLEARED:
        monkeypatch.delenv(key, raising=False)
    for key, value in offline_env(root).items():
        monkeypatch.setenv(key, value)
    yield root
    wandb.teardown()  # the next test's settings (WANDB_DIR) are read by a fresh W&B service
