"""Worker for the HunyuanDiT integration's ``sinks=`` test: real DeepSpeed ZeRO-2 on CPU, one rank (gloo).

Run as ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 1 hydit_sink_worker.py WORKDIR``. Trains a tiny MLP and
saves HunyuanDiT's step tags (``0000002.pt``...) with ``engine.save_checkpoint`` and an EMA in the client state,
as HunyuanDiT's ``save_checkpoint`` does, then calls the integration's three calls: ``start`` (inline evaluation,
``sinks=`` read from WORKDIR/sinks.json), ``tags_saved`` after every save, ``close`` at the end.
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

    from bestckpt.integrations import hunyuandit
    from bestckpt.runners import EvalSchedule

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    ckpt_dir = work / "checkpoints"
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(192, 64), torch.nn.Tanh(), torch.nn.Linear(64, 192))
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                                           config=config)
    ema = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    hunyuandit.start(ckpt_dir, rank, work / "protocol.json", "pipeline_kit:make_deepspeed_sampler", mode="inline",
                     schedule=EvalSchedule(every_n_checkpoints=1), scorer_spec="pipeline_kit:make_kit_scorer",
                     save_top_k=1, keep_every_n_steps=0, sinks=json.loads((work / "sinks.json").read_text()))
    g = torch.Generator().manual_seed(rank)
    for step in range(1, 7):
        x = torch.randn(4, 192, generator=g)
        engine.backward((engine(x) - x).pow(2).mean())
        engine.step()
        with torch.no_grad():
            for k, v in engine.module.state_dict().items():
                ema[k].mul_(0.5).add_(v.detach(), alpha=0.5)
        if step % 2 == 0:
            tag = f"{step:07d}.pt"
            engine.save_checkpoint(str(ckpt_dir), client_state={"steps": step, "epoch": 0, "ema": ema}, tag=tag)
            hunyuandit.tags_saved(rank, [(True, str(ckpt_dir / tag))], step, 0)
    hunyuandit.close(rank)
    leave()  # DeepSpeed keeps the group's gloo threads alive (see dist_exit)


if __name__ == "__main__":
    main()
