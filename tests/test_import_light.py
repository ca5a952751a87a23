"""The tracker imports with the standard library plus filelock: no torch, numpy or rich."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "rich", "tensorboard", "scipy", "PIL")


@pytest.mark.parametrize("stmt", [
    "import bestckpt.tracker",
    "from bestckpt import BestCheckpointTracker, TrackerConfig, Record",
    "import bestckpt.policies, bestckpt.store, bestckpt.config, bestckpt.sinks.console, bestckpt.sinks.results",
])
def test_tracker_import_is_light(stmt: str):
    code = f"{stmt}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_public_api_is_pinned():
    import bestckpt.config as config
    import bestckpt.policies as policies
    import bestckpt.store as store
    import bestckpt.tracker as tracker

    assert tracker.__all__ == ["BestCheckpointTracker", "Record", "StateError", "STATE_SCHEMA"]
    assert config.__all__ == ["TrackerConfig", "DEFAULT_FILENAME_TEMPLATE", "default_of"]
    assert sorted(policies.__all__) == sorted(["Candidate", "Decision", "Policy", "TopK", "LatestN", "EveryNSteps",
                                               "Pinned", "PendingEvaluation", "AnyOf", "rank", "select_best",
                                               "retention_policy"])
    for module in (config, policies, store, tracker):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
