"""examples/lightning/train.py end to end: the real Trainer (1 process, then a resume; 2 DDP processes on
gloo), the demo's tiny DiT, its sampler and evaluators in bestckpt's background worker."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torchrun_kit import run_checked

from bestckpt.tracking.tracker import BestCheckpointTracker

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lightning" / "train.py"
GUIDE_TAGS = ["Evaluation/CLIP_Score", "Evaluation/LPIPS", "Evaluation/Inception_Score", "Evaluation/FID",
              "Evaluation/KID", "Evaluation/Composite_Score", "Evaluation/IsBest"]
TINY = ["--ckpt-every", "5", "--num-eval-prompts", "12", "--sample-steps", "4", "--save-top-k", "1",
        "--keep-every-n-steps", "10", "--batch-size", "16"]


def _run(out: Path, *args: str, fresh: bool = False) -> str:
    """Run the example; ``fresh`` (a run that starts from an empty ``out``): one rerun, from an empty ``out``
    again, after torch's rare C++ abort of a gloo process (torchrun_kit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(SCRIPT), "--output-dir", str(out), "--timings-out", str(out / "timings.json"),
           *TINY, *args]
    if fresh:
        proc = run_checked(cmd, env, 400, cwd=ROOT, fresh=lambda: shutil.rmtree(out, ignore_errors=True))
        return proc.stdout + proc.stderr
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    return text


def _check_best(ckpt_dir: Path) -> dict[int, float]:
    """best.pt names the best-scoring evaluated checkpoint (ties: the earlier step); returns the scores."""
    tracker = BestCheckpointTracker.open(ckpt_dir)
    scores = {r.step: r.score("composite_score") for r in tracker.records if r.status == "evaluated"}
    best = max(scores, key=lambda s: (scores[s], -s))
    assert (ckpt_dir / "best.pt").resolve() == (ckpt_dir / f"step={best:07d}.ckpt").resolve()
    return scores


def _on_disk(ckpt_dir: Path) -> set[int]:
    return {int(p.name[5:12]) for p in ckpt_dir.glob("step=*.ckpt")}


@pytest.mark.distributed
def test_example_one_process_then_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    text = _run(out, "--steps", "20", "--eval-every-n-checkpoints", "1", "--save-last", "link")
    scores = _check_best(ckpt_dir)
    assert sorted(scores) == [5, 10, 15, 20]
    best = max(scores, key=lambda s: (scores[s], -s))
    assert _on_disk(ckpt_dir) == {best, 10, 20}  # top-1, every 10 steps, the latest
    assert (ckpt_dir / "last.ckpt").resolve() == ckpt_dir / "step=0000020.ckpt"  # the link stays alive
    for line in ("[Step 5] Evaluating model performance at step 5", "[Step 20] evaluated in",
                 "🏆 New best checkpoint! Score:", "=== Best Checkpoint Summary ==="):
        assert line in text, line
    for name in ("best_checkpoints.json", "best_checkpoint_results.json"):
        assert (ckpt_dir / name).is_file()
    assert (out / "logs" / "evaluation_worker.log").is_file() and list((out / "evaluation_samples").iterdir())
    acc = EventAccumulator(str(out / "tensorboard_logs"))
    acc.Reload()
    for tag in GUIDE_TAGS:
        assert sorted(e.step for e in acc.Scalars(tag)) == [5, 10, 15, 20], tag
    timings = json.loads((out / "timings.json").read_text())
    assert timings["stack"] == "lightning" and len(timings["blocked_s"]) == 4

    # Lightning resumes from what bestckpt kept (ckpt_path="last" -> the link -> step 20, pinned)
    text = _run(out, "--steps", "30", "--eval-every-n-checkpoints", "1", "--save-last", "link", "--resume", "last")
    assert "Resumed from" in text and "step 20 is pinned" in text
    scores = _check_best(ckpt_dir)
    assert sorted(scores) == [5, 10, 15, 20, 25, 30]
    best = max(scores, key=lambda s: (scores[s], -s))
    assert _on_disk(ckpt_dir) == {best, 10, 20, 30}
    assert BestCheckpointTracker.open(ckpt_dir).config.pinned_steps == (20,)


@pytest.mark.distributed
def test_example_two_ddp_processes_gloo(tmp_path: Path) -> None:
    out, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    text = _run(out, "--steps", "20", "--devices", "2", "--strategy", "ddp", fresh=True)
    assert "distributed_backend=gloo" in text and "All distributed processes registered" in text
    scores = _check_best(ckpt_dir)
    assert sorted(scores) == [10, 20]  # every 2nd checkpoint evaluated
    best = max(scores, key=lambda s: (scores[s], -s))
    assert _on_disk(ckpt_dir) == {best, 10, 20}
    tracker = BestCheckpointTracker.open(ckpt_dir)
    assert {r.step for r in tracker.records} == {5, 10, 15, 20}
    assert {r.step for r in tracker.records if r.pruned} == {5, 15}
    assert len(json.loads((out / "timings.json").read_text())["blocked_s"]) == 4
    for rank in (0, 1):  # Lightning's ckpt_path="best" agrees with best.pt on both ranks
        assert f"rank {rank}: ckpt_path='best' -> {ckpt_dir / f'step={best:07d}.ckpt'}" in text
