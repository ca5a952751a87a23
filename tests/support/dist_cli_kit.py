"""Samplers for tests/cli/test_distributed_cli.py (named ``dist_cli_kit:FACTORY`` on the command line)."""
from __future__ import annotations

import os

from pipeline_kit import TinySampler


class _StopsOnRank1(TinySampler):
    """Rank 1 is interrupted (Ctrl-C) in its first sampler call; rank 0 samples normally."""

    def __call__(self, checkpoint_path, prompts, seeds, settings, device):  # type: ignore[no-untyped-def]
        if os.environ.get("RANK") == "1":
            raise KeyboardInterrupt
        return super().__call__(checkpoint_path, prompts, seeds, settings, device)


def make_stops_on_rank1() -> TinySampler:
    return _StopsOnRank1()
