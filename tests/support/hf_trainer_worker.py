"""Worker for tests/integrations/test_transformers.py: the real transformers.Trainer on 2 CPU processes.

Run as ``torchrun --nproc_per_node 2 hf_trainer_worker.py WORKDIR`` (DDP over gloo). Trains
``hf_kit.TinyImageModel`` for 8 steps, a checkpoint every 2, with a BestCheckpointCallback in background
mode (every process has the callback; world process zero registers). World process zero writes
WORKDIR/report.json: the world size and the processes that registered a checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import torch
    import torch.distributed as dist
    from dist_exit import leave
    from hf_kit import PairData, TinyImageModel
    from transformers import Trainer, TrainingArguments

    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.integrations.transformers import BestCheckpointCallback

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    callback = BestCheckpointCallback(Protocol.from_file(work / "protocol.json"), "hf_kit:make_sampler",
                                      scorer_spec="pipeline_kit:make_kit_scorer", save_top_k=1, keep_every_n_steps=0)
    args = TrainingArguments(output_dir=str(work / "out"), max_steps=8, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=0.05, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=100,
                             seed=0, dataloader_num_workers=0, ddp_backend="gloo")
    Trainer(TinyImageModel(), args, train_dataset=PairData(), callbacks=[callback]).train()
    registered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(registered, (dist.get_rank(), len(callback.blocked_seconds)))
    if dist.get_rank() == 0:
        report = {"world_size": dist.get_world_size(), "registered_on": [r for r, n in registered if n]}
        (work / "report.json").write_text(json.dumps(report))
    leave()  # DDP keeps the group's gloo threads alive: leave without interpreter finalization (dist_exit)


if __name__ == "__main__":
    main()
