"""Worker for tests/test_deepspeed.py: real DeepSpeed ZeRO-2 on CPU, 2 ranks (gloo).

Run as `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 deepspeed_worker.py WORKDIR`. Trains a tiny MLP,
saves a tag every 2 steps through bestckpt.integrations.deepspeed.save_checkpoint with an InlineRunner
(all ranks evaluate), keeps an EMA in the client state; the last tag is saved without a runner so the
test's sidecar has to find it. Rank 0 writes WORKDIR/out.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    import deepspeed
    import torch.distributed as dist
    from dist_exit import leave
    from pipeline_kit import KitScorer, make_deepspeed_sampler

    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.integrations.deepspeed import is_tag_complete, save_checkpoint
    from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner
    from bestckpt.tracking.tracker import BestCheckpointTracker

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    ckpt_dir = work / "checkpoints"
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(192, 64), torch.nn.Tanh(), torch.nn.Linear(64, 192))
    config = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                                           config=config)
    ema = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    protocol = Protocol.from_file(work / "protocol.json")
    tracker = BestCheckpointTracker(ckpt_dir, save_top_k=2, keep_every_n_steps=0)
    runner = InlineRunner(tracker, Evaluator(protocol, make_deepspeed_sampler(), scorer=KitScorer()),
                          EvalSchedule(every_n_checkpoints=1))
    g = torch.Generator().manual_seed(dist.get_rank())
    results = {}
    for step in range(1, 7):
        x = torch.randn(4, 192, generator=g)
        loss = (engine(x) - x).pow(2).mean()
        engine.backward(loss)
        engine.step()
        with torch.no_grad():
            for k, v in engine.module.state_dict().items():
                ema[k].mul_(0.5).add_(v.detach(), alpha=0.5)
        if step % 2 == 0:
            last = step == 6
            tag_dir = save_checkpoint(engine, ckpt_dir, step, client_state={"ema": ema, "steps": step, "epoch": 0},
                                      runner=None if last else runner, epoch=0)
            results[step] = is_tag_complete(ckpt_dir, tag_dir.name)
    dist.barrier()
    if dist.get_rank() == 0:
        recs = {r.step: {"status": r.status, "error": r.error, "weights": r.info.get("weights")}
                for r in tracker.records}
        (work / "out.json").write_text(json.dumps({"complete": results, "records": recs}))
    leave()  # DeepSpeed keeps the group's gloo threads alive (see dist_exit)


if __name__ == "__main__":
    main()
