"""Scores one HunyuanDiT-example tag with the demo's sampler and evaluators, in 1 process or under torchrun (gloo).

argv: PROTOCOL_JSON TAG_DIR STEP OUT_JSON. Under ``torchrun --nproc_per_node 2`` each rank samples its shard and
features are gathered (``Evaluator(dist="auto")``); without torchrun it runs alone. The process that is rank 0
(or alone) writes ``{"world_size", "scores", "weights", "error"}`` to OUT_JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    import torch.distributed as dist
    from dist_exit import leave

    from bestckpt.demo.tag_sampler import make_sampler
    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.runners import Evaluator

    torch.set_num_threads(1)
    protocol_file, tag_dir, step, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    evaluator = Evaluator(Protocol.from_file(protocol_file), make_sampler(), device="cpu",
                          dist="auto" if distributed else None, batch_size=8)
    result = evaluator.evaluate(step, tag_dir)
    evaluator.close()
    if not distributed or dist.get_rank() == 0:
        out.write_text(json.dumps({"world_size": dist.get_world_size() if distributed else 1,
                                   "scores": dict(result.scores), "weights": result.weights, "error": result.error}))
    if distributed:
        leave()  # no gloo thread may outlive the interpreter's finalization (see dist_exit)


if __name__ == "__main__":
    main()
