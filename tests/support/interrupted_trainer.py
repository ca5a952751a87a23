"""A training process that ends without closing its background evaluation (tests/sinks/test_sinks_interrupted.py).

    python interrupted_trainer.py ROOT TRACKING_URI EXPERIMENT

Saves steps 100, 200, 300 with a background worker logging to MLflow, prints ``saved``, then waits for a line
on stdin and returns WITHOUT ``close()`` (multiprocessing stops the daemon worker at exit), unless the test kills
this process first (the worker is then orphaned: it notices that training is gone).
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline_kit import make_protocol, save_checkpoint

from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule


def main() -> None:
    root, uri, experiment = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ckpt_dir = root / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(
        ckpt_dir, make_protocol(root), "pipeline_kit:make_sampler", mode="background",
        scorer_spec="pipeline_kit:make_kit_scorer", batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
        log_file=root / "worker.log", sinks={"mlflow": {"tracking_uri": uri, "experiment_name": experiment}})
    for step in (100, 200, 300):
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    print("saved", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
