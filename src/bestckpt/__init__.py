"""bestckpt: keep the best checkpoints of a generative-model training run while it trains.

Importing this package imports neither torch nor any metric backbone: the public names
below are resolved lazily, so a training script that only tracks checkpoints stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazily resolved names are, for type checkers
    from bestckpt.errors import BestckptError, BestckptWarning
    from bestckpt.tracking.config import TrackerConfig
    from bestckpt.tracking.state import Record
    from bestckpt.tracking.tracker import BestCheckpointTracker

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "BestCheckpointTracker": "bestckpt.tracking.tracker",
    "TrackerConfig": "bestckpt.tracking.config",
    "Record": "bestckpt.tracking.state",
    "BestckptError": "bestckpt.errors",
    "BestckptWarning": "bestckpt.errors",
}

__all__ = ["BestCheckpointTracker", "BestckptError", "BestckptWarning", "Record", "TrackerConfig", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bestckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
