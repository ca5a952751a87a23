"""The tracker core imports with the standard library plus filelock: no torch, numpy or rich."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import bestckpt.tracking

HEAVY = ("torch", "numpy", "rich", "tensorboard", "scipy", "PIL")
TRACKING_MODULES = sorted(f"bestckpt.tracking.{m.name}" for m in pkgutil.iter_modules(bestckpt.tracking.__path__))


@pytest.mark.parametrize("stmt", [
    "from bestckpt import BestCheckpointTracker, TrackerConfig, Record, BestckptError",
    "import " + ", ".join(TRACKING_MODULES + ["bestckpt.errors", "bestckpt.fsio"]),
])
def test_tracker_import_is_light(stmt: str):
    code = f"{stmt}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
