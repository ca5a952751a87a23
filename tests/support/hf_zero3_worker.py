"""Worker for tests/integrations/test_transformers.py: the real Trainer under real DeepSpeed ZeRO-3 on CPU.

Run as ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 1 hf_zero3_worker.py WORKDIR``. Trains
``hf_kit.TinyImageModel`` twice (4 steps, a checkpoint every 2, inline evaluation of every 2nd): without
and with ``stage3_gather_16bit_weights_on_model_save``. Writes WORKDIR/report.json: per run, the files of
``checkpoint-4``, its tracker record (status, error), where ``best.pt`` points, and the callback's warnings.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


def run(work: Path, gather: bool) -> dict[str, Any]:
    from hf_kit import PairData, TinyImageModel
    from transformers import Trainer, TrainingArguments

    from bestckpt.evaluation.protocol import Protocol
    from bestckpt.integrations.transformers import BestCheckpointCallback
    from bestckpt.tracking.tracker import BestCheckpointTracker

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    handler.setLevel(logging.WARNING)
    logging.getLogger("bestckpt.integrations.transformers").addHandler(handler)
    out = work / ("gather" if gather else "shards")
    ds = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": gather}}
    callback = BestCheckpointCallback(Protocol.from_file(work / "protocol.json"), "hf_kit:make_sampler", mode="inline",
                                      scorer_spec="pipeline_kit:make_kit_scorer", save_top_k=1, keep_every_n_steps=0)
    args = TrainingArguments(str(out), max_steps=4, save_steps=2, per_device_train_batch_size=8, learning_rate=0.05,
                             report_to=[], disable_tqdm=True, deepspeed=ds, use_cpu=True)
    Trainer(TinyImageModel(), args, train_dataset=PairData(), callbacks=[callback]).train()
    logging.getLogger("bestckpt.integrations.transformers").removeHandler(handler)
    rec = next(r for r in BestCheckpointTracker.open(out).records if r.step == 4)
    best = out / "best.pt"
    return {"files": sorted(os.listdir(out / "checkpoint-4")), "status": rec.status, "error": rec.error,
            "best": os.readlink(best) if best.is_symlink() else None, "warnings": warnings}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    report = {"shards": run(work, False), "gather": run(work, True)}
    (work / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
