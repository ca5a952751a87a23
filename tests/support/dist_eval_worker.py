"""Worker for tests/test_distributed_eval.py; run with `torchrun --nproc_per_node 2` (gloo).

argv: WORKDIR (holds protocol.json, protocol_one.json, checkpoints/0000100.pt). Rank 0 writes out.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dist_exit import leave
from pipeline_kit import KitScorer, TinySampler

from bestckpt.evaluation.evaluate import (
    evaluate_checkpoint,
    prepare_reference_statistics,
)
from bestckpt.evaluation.protocol import Protocol
from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner
from bestckpt.tracking.tracker import BestCheckpointTracker


class FailsOnRank1(TinySampler):
    def __call__(self, checkpoint_path, prompts, seeds, settings, device):
        if dist.get_rank() == 1:
            raise RuntimeError("out of memory on rank 1 (injected)")
        return super().__call__(checkpoint_path, prompts, seeds, settings, device)


def main() -> None:
    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    backend = os.environ.get("BESTCKPT_TEST_BACKEND", "gloo")
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(dist.get_rank())
    device = torch.device("cuda", dist.get_rank()) if backend == "nccl" else torch.device("cpu")
    rank = dist.get_rank()
    protocol = Protocol.from_file(work / "protocol.json")
    ckpt = work / "checkpoints" / "0000100.pt"
    scorer = KitScorer()
    ref = prepare_reference_statistics(protocol, scorer)
    out: dict = {"world_size": dist.get_world_size()}

    a = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, device=device, batch_size=3,
                            samples_dir=work / "samples_dist")
    b = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, device=device, batch_size=3)
    out["scores"], out["again"], out["weights"], out["error"] = a.scores, b.scores, a.weights, a.error

    failed = evaluate_checkpoint(ckpt, 100, protocol, FailsOnRank1(), scorer, ref, device=device)
    out["failed_error"] = failed.error  # every rank must get it, and nobody may hang

    one = Protocol.from_file(work / "protocol_one.json")  # 1 sample on 2 ranks: rank 1's shard is empty
    r1 = evaluate_checkpoint(ckpt, 100, one, TinySampler(), scorer, prepare_reference_statistics(one, scorer),
                             device=device)
    out["one_sample"] = {"scores": r1.scores, "error": r1.error}

    # inline runner: every rank calls it; only rank 0 (the tracker's writer) writes the state
    tracker = BestCheckpointTracker(work / "checkpoints", save_top_k=2)
    runner = InlineRunner(tracker, Evaluator(protocol, TinySampler(), scorer=scorer, device=device),
                          EvalSchedule(every_n_checkpoints=1))
    res = runner.checkpoint_saved(100, ckpt, epoch=1)
    out["inline"] = {"scores": res.scores, "error": res.error}
    dist.barrier()
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, failed.error)
    out["failed_error_all_ranks"] = errors
    if rank == 0:
        (work / "out.json").write_text(json.dumps(out, indent=1))
    leave()  # no gloo thread may outlive the interpreter's finalization (see dist_exit)


if __name__ == "__main__":
    main()
