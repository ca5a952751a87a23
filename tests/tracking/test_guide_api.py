"""The guide's tracker API as a drop-in (``bestckpt.tracking.guide_api``): one test per method, and a
script written only against the guide's API (``tests/support/guide_api_script.py``) run unchanged."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bestckpt import BestCheckpointTracker
from bestckpt.tracking.guide_api import CLEANUP_DEPRECATION

M = "composite_score"
SCRIPT = Path(__file__).resolve().parents[1] / "support" / "guide_api_script.py"


def save(ckdir: Path, step: int) -> str:
    path = ckdir / f"{step:07d}.pt"
    path.write_bytes(f"step {step}".encode())
    return str(path)


def scored(ckdir: Path, scores: dict[int, float], **kw) -> BestCheckpointTracker:
    t = BestCheckpointTracker(ckdir, M, True, 3, **kw)
    for step, score in scores.items():
        t.update_checkpoint(step, step // 10, save(ckdir, step), {M: score, "fid": 10.0})
    return t


def test_constructor_takes_the_guides_arguments_positionally_and_by_keyword(tmp_path: Path):
    a = BestCheckpointTracker(tmp_path / "a", "fid", False, 2)
    b = BestCheckpointTracker(checkpoint_dir=tmp_path / "b", metric_name="fid", higher_is_better=False, save_top_k=2)
    for t, d in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        assert (t.metric_name, t.higher_is_better, t.save_top_k) == ("fid", False, 2)
        assert t.checkpoint_dir == d and t.tracker_file == d / "best_checkpoints.json"
        assert t.best_checkpoints == []


def test_get_best_score_and_info(tmp_path: Path):
    t = BestCheckpointTracker(tmp_path, M, True, 3)
    assert t.get_best_score() is None and t.get_best_checkpoint_info() is None
    t = scored(tmp_path, {10: 0.5, 20: 0.9, 30: 0.7})
    assert t.get_best_score() == 0.9
    info = t.get_best_checkpoint_info()
    assert info is not None
    assert {"step", "epoch", "checkpoint_path", "metrics", "timestamp"} <= set(info)
    assert (info["step"], info["epoch"], info["metrics"]) == (20, 2, {M: 0.9, "fid": 10.0})
    assert info["checkpoint_path"] == str(tmp_path / "0000020.pt")  # usable as the guide's callers used it
    assert [c["step"] for c in t.best_checkpoints] == [20, 30, 10]


def test_update_checkpoint_answers_new_best_not_top_k_admission(tmp_path: Path):
    """The documented difference: the fork answered 'admitted to the top-k'."""
    t = scored(tmp_path, {10: 0.5, 20: 0.9})
    metrics = {M: 0.6}
    assert t.should_save_checkpoint(metrics) is True  # the fork's answer
    assert t.update_checkpoint(30, 3, save(tmp_path, 30), metrics) is False  # ours: not the new best
    assert t.update_checkpoint(40, 4, save(tmp_path, 40), {M: 0.95}) is True


def test_should_save_checkpoint(tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = BestCheckpointTracker(tmp_path, M, True, 3)
    assert t.should_save_checkpoint({M: 0.1}) is True  # fewer than k ranked
    t = scored(tmp_path, {10: 0.5, 20: 0.9, 30: 0.7})
    assert t.should_save_checkpoint({M: 0.6}) is True  # beats the worst of the top 3 (0.5)
    assert t.should_save_checkpoint({M: 0.5}) is False  # a tie is not better
    assert t.should_save_checkpoint({M: 0.2}) is False
    assert t.records and len(t.records) == 3  # it records nothing
    for bad in ({"fid": 3.0}, {M: float("nan")}, {M: float("inf")}, {M: None}):
        caplog.clear()
        assert t.should_save_checkpoint(bad) is False
        assert f"Metric '{M}'" in caplog.text
    low = BestCheckpointTracker(tmp_path / "low", "fid", False, 1)
    low.update_checkpoint(1, 0, save(tmp_path / "low", 1), {"fid": 20.0})
    assert low.should_save_checkpoint({"fid": 19.0}) and not low.should_save_checkpoint({"fid": 21.0})
    assert low.is_better(19.0, 20.0) and not low.is_better(20.0, 20.0)


def test_should_save_with_save_top_k_all(tmp_path: Path):
    t = BestCheckpointTracker(tmp_path, M, True, -1)
    t.update_checkpoint(1, 0, save(tmp_path, 1), {M: 0.9})
    assert t.should_save_checkpoint({M: 0.0}) is True


def test_update_best_link_repairs_a_moved_link_and_readers_write_nothing(tmp_path: Path):
    t = scored(tmp_path, {10: 0.5, 20: 0.9, 30: 0.7})
    link = tmp_path / "best.pt"
    assert os.readlink(link) == "0000020.pt"
    os.unlink(link)
    os.symlink("0000010.pt", link)  # moved by hand
    reader = BestCheckpointTracker(tmp_path, is_writer=False)
    assert reader.update_best_link() is None and os.readlink(link) == "0000010.pt"
    assert t.update_best_link() is None and os.readlink(link) == "0000020.pt"


def test_cleanup_old_checkpoints_applies_retention_only_and_warns(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = scored(tmp_path, {10: 0.5, 20: 0.9, 30: 0.7, 40: 0.1}, keep_every_n_steps=None)
    everything = t.records
    asked = [{"step": r.step, "checkpoint_path": str(tmp_path / r.path)} for r in everything]
    with pytest.warns(DeprecationWarning, match="no longer deletes the checkpoints it is given") as rec:
        decisions = t.cleanup_old_checkpoints(asked, keep_every_n=10)
    assert str(rec[0].message) == CLEANUP_DEPRECATION
    assert {d.step for d in decisions if d.keep} == {10, 20, 30, 40}  # top 3 + newest: nothing to delete
    assert sorted(p.name for p in tmp_path.glob("00000*.pt")) == ["0000010.pt", "0000020.pt", "0000030.pt",
                                                                    "0000040.pt"]
    assert "cleanup_old_checkpoints: kept 0000020.pt" in caplog.text
    t.update_checkpoint(50, 5, save(tmp_path, 50), {M: 0.2})  # 40 leaves the protected set: retention drops it
    assert not (tmp_path / "0000040.pt").exists()
    with pytest.warns(DeprecationWarning):
        t.cleanup_old_checkpoints()  # the guide's signature, no list
    assert (tmp_path / "0000020.pt").exists() and (tmp_path / "0000050.pt").exists()


def test_print_summary_logs_the_guides_block_and_prints_nothing(tmp_path: Path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="bestckpt")
    BestCheckpointTracker(tmp_path / "empty", M, True, 3).print_summary()
    assert "No checkpoints saved yet" in caplog.text
    caplog.clear()
    scored(tmp_path, {10: 0.5, 20: 0.9}).print_summary()
    block = [r.getMessage() for r in caplog.records if "=== Best Checkpoint Summary ===" in r.getMessage()]
    assert len(block) == 1
    assert block[0].splitlines()[:5] == ["=== Best Checkpoint Summary ===", f"Tracking metric: {M}",
                                        "Saved checkpoints: 2/3", "  #1: Step 20, Epoch 2", "      Path: 0000020.pt"]
    assert capsys.readouterr() == ("", "")


def test_export_results_returns_the_dict_and_writes_the_file(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    t = scored(tmp_path, {10: 0.5, 20: 0.9, 30: 0.7})
    results = t.export_results()
    assert json.loads((tmp_path / "best_checkpoint_results.json").read_text()) == results
    assert results["tracker_config"]["metric_name"] == M and results["tracker_config"]["save_top_k"] == 3
    assert [r["step"] for r in results["best_checkpoints"]] == [20, 30, 10]
    assert results["summary"]["total_tracked"] == 3 and results["summary"]["best_score"] == 0.9
    assert results["summary"]["best_checkpoint"] == "0000020.pt"
    assert f"Results exported to {tmp_path / 'best_checkpoint_results.json'}" in caplog.text
    out = tmp_path.parent / "elsewhere.json"
    copy = t.export_results(str(out))
    assert json.loads(out.read_text()) == copy and copy["summary"] == results["summary"]
    assert t.write_results() == tmp_path / "best_checkpoint_results.json"
    with pytest.raises(ValueError, match="best_checkpoints.json"):
        t.export_results(tmp_path / "best_checkpoints.json")


def test_export_results_on_a_reader_returns_the_dict_without_writing_the_shared_file(tmp_path: Path):
    scored(tmp_path, {10: 0.5})
    (tmp_path / "best_checkpoint_results.json").unlink()
    reader = BestCheckpointTracker(tmp_path, is_writer=False)
    assert reader.export_results()["summary"]["best_step"] == 10
    assert not (tmp_path / "best_checkpoint_results.json").exists()


def test_a_script_written_for_the_guide_runs_unchanged(tmp_path: Path):
    """Only its import differs from the guide; it runs to the end on real torch checkpoints."""
    source = SCRIPT.read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import json", "import logging", "import os", "import sys", "import torch",
                       "from bestckpt import BestCheckpointTracker"]
    ckdir = tmp_path / "checkpoints"
    env = dict(os.environ)  # PYTHONPATH (this worktree's src) is inherited
    proc = subprocess.run([sys.executable, str(SCRIPT), str(ckdir)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "GUIDE-SCRIPT-DONE"
    answers = json.loads(next(line for line in proc.stdout.splitlines()
                              if line.startswith("GUIDE-SCRIPT-ANSWERS "))[len("GUIDE-SCRIPT-ANSWERS "):])
    # scores 0.40 0.55 0.50 0.70 0.45 0.65 0.72 0.30 0.60 0.58 at steps 100..1000, top 3
    assert answers["should_save"] == [True, True, True, True, False, True, True, False, False, False]
    assert answers["update"] == [True, True, False, True, False, False, True, False, False, False]
    assert answers["best_scores"] == [0.40, 0.55, 0.55, 0.70, 0.70, 0.70, 0.72, 0.72, 0.72, 0.72]
    assert answers["missing_metric"] is False
    info = answers["info"]
    assert (info["step"], info["epoch"], info["metrics"]["composite_score"]) == (700, 1, 0.72)
    assert info["checkpoint_path"] == str(ckdir / "0000700.pt")
    # best.pt, retention (top 3 + the newest; the cleanup deleted nothing else), the checkpoint itself
    assert os.readlink(ckdir / "best.pt") == "0000700.pt"
    import torch

    assert torch.load(ckdir / "best.pt", weights_only=True)["steps"] == 700
    kept = sorted(p.name for p in ckdir.glob("0*.pt"))
    assert kept == ["0000400.pt", "0000600.pt", "0000700.pt", "0001000.pt"]
    # results: the returned dict is the file, and the copy has the same summary
    results = answers["results"]
    assert json.loads((ckdir / "best_checkpoint_results.json").read_text()) == results
    assert [r["step"] for r in results["best_checkpoints"]] == [700, 400, 600]
    assert results["summary"]["best_score"] == 0.72 and results["summary"]["total_tracked"] == 3
    assert json.loads((tmp_path / "results_copy.json").read_text())["summary"] == answers["copy_summary"]
    assert [c["step"] for c in answers["best_checkpoints"]] == [700, 400, 600]
    # the guide's lines through logging; the deprecation named where the script called it
    assert "=== Best Checkpoint Summary ===" in proc.stderr and "#1: Step 700, Epoch 1" in proc.stderr
    assert "New best checkpoint! Score: 0.72" in proc.stderr
    assert f"guide_api_script.py:{_line_of(source, 'best_tracker.cleanup_old_checkpoints(')}: DeprecationWarning" \
        in proc.stderr
    assert "no longer deletes the checkpoints it is given" in proc.stderr
    assert "=== Best Checkpoint Summary ===" not in proc.stdout  # logging, not print


def _line_of(source: str, needle: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), start=1) if needle in line)


def test_warnings_module_is_untouched_by_the_api(tmp_path: Path):
    """The deprecation is a normal warning: an error filter turns it into an exception at the call."""
    t = scored(tmp_path, {10: 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning):
            t.cleanup_old_checkpoints([])
    assert (tmp_path / "0000010.pt").exists()
