"""examples/transformers/train.py end to end: the demo's tiny DiT trained by the real transformers.Trainer,
scored in the background by the demo's evaluators; the guide's files, log lines and TensorBoard tags (CLIP
included), and the BENCH.md timings file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bestckpt.tracking.tracker import BestCheckpointTracker  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformers" / "train.py"
TAGS = {"Evaluation/CLIP_Score", "Evaluation/LPIPS", "Evaluation/Inception_Score", "Evaluation/FID",
        "Evaluation/Composite_Score", "Evaluation/IsBest"}


def test_example_trains_keeps_the_best_and_writes_timings(tmp_path: Path) -> None:
    out, timings = tmp_path / "run", tmp_path / "timings.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(EXAMPLE), "--output-dir", str(out), "--steps", "20", "--ckpt-every", "5",
           "--batch-size", "16", "--save-top-k", "1", "--keep-every-n-steps", "0", "--timings-out", str(timings)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    data = json.loads(timings.read_text())
    assert data["stack"] == "transformers" and len(data["blocked_s"]) == 4
    assert all(isinstance(s, float) and s >= 0 for s in data["blocked_s"])
    tracker = BestCheckpointTracker.open(out)
    assert {r.step for r in tracker.records if r.status == "evaluated"} == {10, 20}
    assert tracker.best is not None and os.readlink(out / "best.pt") == f"checkpoint-{tracker.best.step}"
    assert {p.name for p in out.glob("checkpoint-*")} == {f"checkpoint-{tracker.best.step}", "checkpoint-20"}
    for line in ("[Step 10] Evaluating model performance at step 10", "🏆 New best checkpoint! Score:",
                 "=== Best Checkpoint Summary ==="):
        assert line in log
    assert (out / "best_checkpoint_results.json").is_file()
    assert (out / "evaluation_samples" / "0000010" / "eval_comparison_000.jpg").is_file()
    acc = EventAccumulator(str(out / "tensorboard_logs"), size_guidance={"scalars": 0})
    acc.Reload()
    assert TAGS <= set(acc.Tags()["scalars"])
