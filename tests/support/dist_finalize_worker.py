"""Worker for tests/runners/test_finalize.py's distributed case; run with `torchrun --nproc_per_node 2` (gloo).

argv: WORKDIR (holds final.json and checkpoints/ with a scored run). Every rank calls finalize alike; only rank 0
(the tracker's writer) records. Each rank writes out_<rank>.json with its decision.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dist_exit import leave
from pipeline_kit import KitScorer, TinySampler

from bestckpt.evaluation.protocol import Protocol
from bestckpt.runners import Evaluator
from bestckpt.runners.finalize import finalize
from bestckpt.tracking.tracker import BestCheckpointTracker


def main() -> None:
    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    dist.init_process_group("gloo")
    tracker = BestCheckpointTracker(work / "checkpoints")  # the writer is global rank 0
    evaluator = Evaluator(Protocol.from_file(work / "final.json"), TinySampler(), scorer=KitScorer(), device="cpu",
                          batch_size=3)
    decision = finalize(tracker, evaluator)
    (work / f"out_{dist.get_rank()}.json").write_text(json.dumps(decision.to_json()))
    leave()  # no gloo thread may outlive the interpreter's finalization (see dist_exit)


if __name__ == "__main__":
    main()
