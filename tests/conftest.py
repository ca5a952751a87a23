"""Fixtures shared across the test folders (which mirror the package: tests/tracking, tests/metrics...).

Helpers that tests and their subprocesses import (samplers named ``pipeline_kit:make_sampler``, worker
scripts, HTML checks) live in ``tests/support``, which pytest puts on ``sys.path``
(``pythonpath`` in pyproject.toml); tests that start subprocesses put it on ``PYTHONPATH``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small tensors: intra-op threads only add overhead on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty weight caches: TORCH_HOME and HOME under tmp_path, no bestckpt weight variables."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("BESTCKPT_WEIGHTS_DIR", "BESTCKPT_ALLOW_DOWNLOAD", "BESTCKPT_VERIFY_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Offline W&B confined to ``tmp_path/wandb_root`` (no network, no user settings or credentials read), shared by
    the sink and integration tests; yields that folder (read it back with ``wandb_offline.read_offline_runs``)."""
    wandb = pytest.importorskip("wandb")
    from wandb_offline import CLEARED, offline_env

    root = tmp_path / "wandb_root"
    for key in CLEARED:
        monkeypatch.delenv(key, raising=False)
    for key, value in offline_env(root).items():
        monkeypatch.setenv(key, value)
    yield root
    wandb.teardown()  # the next test's settings (WANDB_DIR) are read by a fresh W&B service


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One local MLflow SQLite store for the session (creating its tables takes seconds), shared by the sink and
    integration tests: ``{"uri", "root", "client"}``; each test uses its own experiment (mlflow_kit.training_run)."""
    pytest.importorskip("mlflow")
    from mlflow_kit import open_store

    return open_store(tmp_path_factory.mktemp("mlflow"))
