"""DeepSpeed: tag completeness rules, and a real ZeRO-2 run on CPU (2 ranks) evaluated inline and by a sidecar."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_kit import TESTS_DIR, KitScorer, make_deepspeed_sampler, make_protocol

from bestckpt.integrations.deepspeed import (
    is_tag_complete,
    load_model_states,
    mark_complete,
)
from bestckpt.runners import Evaluator, SidecarWatcher
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.layout import find_checkpoints
from bestckpt.tracking.tracker import BestCheckpointTracker


def test_tag_completeness_rules(tmp_path: Path) -> None:
    for step in (100, 200, 300):
        (tmp_path / f"{step:07d}.pt").mkdir()
    assert is_tag_complete(tmp_path, "0000100.pt")  # a later tag exists
    assert not is_tag_complete(tmp_path, "0000300.pt")  # newest, unmarked, not named by latest
    (tmp_path / "latest").write_text("0000300.pt")
    assert is_tag_complete(tmp_path, "0000300.pt")
    (tmp_path / "latest").write_text("0000200.pt")
    assert not is_tag_complete(tmp_path, "0000300.pt")
    mark_complete(tmp_path / "0000300.pt")
    assert is_tag_complete(tmp_path, "0000300.pt")
    (tmp_path / "0000400.pt").mkdir()
    found = find_checkpoints(tmp_path, BestCheckpointTracker(tmp_path, is_writer=False).config.step_from_name)
    assert [(s, c) for s, _, c in found] == [(100, True), (200, True), (300, True), (400, False)]
    with pytest.raises(FileNotFoundError, match="mp_rank_00_model_states.pt"):
        load_model_states(tmp_path / "0000100.pt")


def test_tag_completeness_reads_the_tracker_scan(tmp_path: Path) -> None:
    """Later tags are found by the tracker's own scan and name parser: past 7 digits too, and
    with a custom template; a name that is no step checkpoint needs the marker or `latest`."""
    (tmp_path / "9999000.pt").mkdir()
    (tmp_path / "10000000.pt").mkdir()
    assert is_tag_complete(tmp_path, "9999000.pt")
    assert not is_tag_complete(tmp_path, "10000000.pt")
    custom = TrackerConfig(checkpoint_dir=tmp_path, filename_template="global_step{step}")
    (tmp_path / "global_step5").mkdir()
    (tmp_path / "global_step6").mkdir()
    assert not is_tag_complete(tmp_path, "global_step5")  # the default template does not see the later one
    assert is_tag_complete(tmp_path, "global_step5", step_from_name=custom.step_from_name)
    (tmp_path / "other").mkdir()
    assert not is_tag_complete(tmp_path, "other")
    mark_complete(tmp_path / "other")
    assert is_tag_complete(tmp_path, "other")


@pytest.mark.distributed
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_cpu_inline_and_sidecar(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    protocol.to_file(tmp_path / "protocol.json")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS_DIR / "deepspeed_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["complete"] == {"2": True, "4": True, "6": True}
    ckpt_dir = tmp_path / "checkpoints"
    assert (ckpt_dir / "0000006.pt" / "mp_rank_00_model_states.pt").is_file()
    assert (ckpt_dir / "latest").read_text().strip() == "0000006.pt"
    recs = out["records"]
    assert recs["2"]["status"] == recs["4"]["status"] == "evaluated", recs
    assert recs["2"]["weights"] == "ema"
    assert "6" not in recs  # saved without a runner: left for the sidecar
    state, weights = load_model_states(ckpt_dir / "0000006.pt")
    assert weights == "ema" and "2.weight" in state

    tracker = BestCheckpointTracker.open(ckpt_dir, is_writer=True)
    watcher = SidecarWatcher(tracker, Evaluator(protocol, make_deepspeed_sampler(), scorer=KitScorer(), dist=None),
                             adopt_after=0)
    assert watcher.run(once=True) == 1 and watcher.evaluated == [6]
    rec6 = next(r for r in tracker.records if r.step == 6)
    assert rec6.status == "evaluated" and rec6.info["weights"] == "ema"
    assert watcher.run(once=True) == 0  # nothing evaluated twice
