"""A training script written only against the guide's tracker API (the HunyuanDiT fork's
``hydit/best_checkpoint_tracker.py``, used the way its ``train_deepspeed.py`` uses it).

Its one change from the guide: the import line (``from hydit.best_checkpoint_tracker import
BestCheckpointTracker`` became ``from bestckpt import BestCheckpointTracker``). It saves real torch
checkpoints, scores them with a fixed table (standing in for the guide's evaluation), and calls every
method of the guide's tracker; the test (``tests/tracking/test_guide_api.py``) runs it in a subprocess
and checks what it printed and left on disk. Usage: ``python guide_api_script.py CHECKPOINT_DIR``.
"""
import json
import logging
import os
import sys

import torch

from bestckpt import BestCheckpointTracker

#: composite_score of the checkpoint saved at steps 100, 200, ..., 1000
SCORES = [0.40, 0.55, 0.50, 0.70, 0.45, 0.65, 0.72, 0.30, 0.60, 0.58]


def save_checkpoint(checkpoint_dir, train_steps, epoch):
    """Save like a training script: a temporary name, then the final one."""
    path = f"{checkpoint_dir}/{train_steps:07d}.pt"
    torch.save({"steps": train_steps, "epoch": epoch, "weight": torch.full((4, 4), float(train_steps))}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def main(checkpoint_dir):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("train")
    os.makedirs(checkpoint_dir, exist_ok=True)

    best_tracker = BestCheckpointTracker(
        checkpoint_dir=checkpoint_dir,
        metric_name="composite_score",
        higher_is_better=True,
        save_top_k=3,
    )
    logger.info("Best checkpoint tracker initialized")
    assert best_tracker.get_best_score() is None and best_tracker.get_best_checkpoint_info() is None

    answers = {"should_save": [], "update": [], "best_scores": []}
    saved = []
    for i, score in enumerate(SCORES):
        train_steps, epoch = (i + 1) * 100, i // 4
        path = save_checkpoint(checkpoint_dir, train_steps, epoch)
        metrics = {"clip_score": 0.2 + score / 10, "fid": 100.0 - score * 50, "composite_score": score}
        answers["should_save"].append(best_tracker.should_save_checkpoint(metrics))
        answers["update"].append(best_tracker.update_checkpoint(train_steps, epoch, path, metrics))
        answers["best_scores"].append(best_tracker.get_best_score())
        saved.append({"step": train_steps, "epoch": epoch, "checkpoint_path": path, "metrics": metrics})
    answers["missing_metric"] = best_tracker.should_save_checkpoint({"clip_score": 0.3})

    best_tracker.update_best_link()
    info = best_tracker.get_best_checkpoint_info()
    logger.info(f"Best checkpoint: step {info['step']} ({info['checkpoint_path']})")
    # the guide deleted what its list named; pass every checkpoint, the best and the newest included
    best_tracker.cleanup_old_checkpoints(saved, keep_every_n=10)

    logger.info("TRAINING COMPLETED - BEST CHECKPOINT SUMMARY")
    best_tracker.print_summary()
    results = best_tracker.export_results()
    copy = best_tracker.export_results(output_file=os.path.join(checkpoint_dir, "..", "results_copy.json"))
    logger.info(f"Best model available as: {checkpoint_dir}/best.pt")

    answers.update(info=info, results=results, copy_summary=copy["summary"],
                   best_checkpoints=best_tracker.best_checkpoints)
    print("GUIDE-SCRIPT-ANSWERS " + json.dumps(answers))
    print("GUIDE-SCRIPT-DONE")


if __name__ == "__main__":
    main(sys.argv[1])
