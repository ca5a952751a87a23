"""Shared by the hostile-input tests: the ``world`` fixture (a checkpoint directory whose surroundings
must stay unchanged)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hostile_dir import snapshot_outside


@pytest.fixture()
def world(tmp_path: Path):
    """The checkpoint directory ``area/ck``; on teardown, checks that nothing else in ``area`` changed."""
    area = tmp_path / "area"
    ckdir = area / "ck"
    ckdir.mkdir(parents=True)
    (area / "outside").mkdir()
    (area / "outside" / "precious.pt").write_bytes(b"not yours")
    before = snapshot_outside(area, ckdir)
    yield ckdir
    assert snapshot_outside(area, ckdir) == before
