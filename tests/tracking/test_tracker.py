"""The guide's scenario end to end on real files and DeepSpeed-style tag directories."""
from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import pytest

from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.tracker import BestCheckpointTracker, Record, StateError

GUIDE_METRICS = {"clip_score": 0.8123, "lpips": 0.1234, "inception_score": 3.45, "composite_score": 0.7245}


def save_ds(ckdir: Path, step: int, *, epoch: int = 0, latest: bool = True) -> Path:
    """A DeepSpeed-style tag directory as engine.save_checkpoint writes it, plus the `latest` file."""
    tag = ckdir / f"{step:07d}.pt"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(f"module steps={step} epoch={epoch}".encode())
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim")
    if latest:
        (ckdir / "latest").write_text(tag.name)
    return tag


def save_file(ckdir: Path, step: int) -> Path:
    path = ckdir / f"{step:07d}.pt"
    path.write_bytes(f"step {step}".encode())
    return path


def strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"bare {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def entries(ckdir: Path) -> set[str]:
    return {n for n in os.listdir(ckdir) if n.endswith(".pt") and n[:7].isdigit()}


def resolved_best(ckdir: Path) -> Path:
    link = ckdir / "best.pt"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    return Path(os.path.realpath(link))


def test_guide_scenario_deepspeed_tags(tmp_path: Path, caplog):
    """Checkpoint every 400 steps, evaluate every 2nd, keep top 3 + latest + every 10k; 12,400 steps."""
    caplog.set_level(logging.INFO, logger="bestckpt")
    ckdir = tmp_path / "checkpoints"
    tracker = BestCheckpointTracker(checkpoint_dir=ckdir, metric_name="composite_score", higher_is_better=True,
                                    save_top_k=3)
    rng = random.Random(0)
    scores: dict[int, float] = {}
    for step in range(400, 12_401, 400):
        epoch = step // 100
        tag = save_ds(ckdir, step, epoch=epoch)
        evaluate = step % 800 == 0
        tracker.checkpoint_saved(step, tag, epoch=epoch, evaluate=evaluate)
        if evaluate:
            assert step in tracker.pending_steps()
            scores[step] = round(rng.uniform(0.2, 0.7), 4)
            if step == 6400:
                scores[step] = 0.7245  # the guide's best
                is_best = tracker.update_checkpoint(step, epoch, str(tag), dict(GUIDE_METRICS))
                assert is_best
            else:
                tracker.update_checkpoint(step, epoch, str(tag), {**GUIDE_METRICS, "composite_score": scores[step]})
            assert step not in tracker.pending_steps()

    top3 = sorted(scores, key=lambda s: (-scores[s], s))[:3]
    expected = {f"{s:07d}.pt" for s in set(top3) | {10_000, 12_400}}
    assert entries(ckdir) == expected, sorted(entries(ckdir))
    assert resolved_best(ckdir) == (ckdir / "0006400.pt").resolve()
    assert (ckdir / "best.pt" / "mp_rank_00_model_states.pt").read_bytes().startswith(b"module steps=6400")
    assert tracker.best.step == 6400 and tracker.best.path == "0006400.pt"

    # the guide's log lines
    assert "🏆 New best checkpoint! Score: 0.7245" in caplog.messages
    caplog.clear()
    tracker.log_summary()
    block = caplog.messages[-1].splitlines()
    assert block[:5] == [
        "=== Best Checkpoint Summary ===",
        "Tracking metric: composite_score",
        "Saved checkpoints: 3/3",
        "  #1: Step 6400, Epoch 64",
        "      Path: 0006400.pt",
    ]
    assert block[5] == "      Metrics: clip_score: 0.8123, lpips: 0.1234, inception_score: 3.45, composite_score: 0.7245"
    assert block[-1] == "================================"
    assert len(block) == 3 + 3 * 3 + 1

    # best_checkpoints.json: versioned, the original's keys, every record, relative paths, strict JSON
    state = strict_json(ckdir / "best_checkpoints.json")
    assert state["schema"] == "bestckpt.state/1"
    assert (state["metric_name"], state["higher_is_better"], state["save_top_k"]) == ("composite_score", True, 3)
    assert state["tracker_config"]["keep_every_n_steps"] == 10_000 and state["best_step"] == 6400
    assert [r["step"] for r in state["checkpoints"]] == list(range(400, 12_401, 400))
    for rec in state["checkpoints"]:
        assert set(rec) >= {"step", "epoch", "checkpoint_path", "metrics", "status", "timestamp"}
        assert rec["checkpoint_path"] == f"{rec['step']:07d}.pt"
        assert rec.get("pruned", False) == (rec["checkpoint_path"] not in expected)
        assert rec["status"] == ("evaluated" if rec["step"] % 800 == 0 else "saved")

    # best_checkpoint_results.json: the guide's export
    tracker.export_results()
    results = strict_json(ckdir / "best_checkpoint_results.json")
    assert set(results) >= {"tracker_config", "best_checkpoints", "summary"}
    assert results["summary"]["total_tracked"] == 3
    assert results["summary"]["best_score"] == 0.7245
    assert results["summary"]["best_checkpoint"] == "0006400.pt"
    assert [r["step"] for r in results["best_checkpoints"]] == [6400] + [s for s in top3 if s != 6400]

    # resume: a new tracker continues where the old one stopped
    again = BestCheckpointTracker(ckdir, save_top_k=3)
    assert again.best.step == 6400 and len(again.records) == len(state["checkpoints"])
    tag = save_ds(ckdir, 12_800, epoch=128)
    assert again.update_checkpoint(12_800, 128, tag, {"composite_score": 0.9}) is True
    assert resolved_best(ckdir) == tag.resolve()
    assert "0012400.pt" not in entries(ckdir)  # no longer latest, not top-3, not every-10k


def test_plain_files_and_default_paths(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=0)
    for step, score in [(100, 0.3), (200, 0.5), (300, 0.4), (400, 0.2)]:
        save_file(tmp_path, step)
        tracker.update_checkpoint(step, 1, None, {"composite_score": score})  # None: the default name
    assert entries(tmp_path) == {"0000200.pt", "0000300.pt", "0000400.pt"}
    assert resolved_best(tmp_path) == (tmp_path / "0000200.pt").resolve()
    assert (tmp_path / "best.pt").read_bytes() == b"step 200"


def test_lower_is_better_and_ties_keep_earlier(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, metric_name="fid", higher_is_better=False, save_top_k=1)
    for step, fid in [(1, 30.0), (2, 20.0), (3, 20.0), (4, 25.0)]:
        save_file(tmp_path, step)
        new = tracker.update_checkpoint(step, 0, tmp_path / f"{step:07d}.pt", {"fid": fid})
        assert new == (step in (1, 2))
    assert tracker.best.step == 2  # tie with step 3: the earlier stays ahead
    assert entries(tmp_path) == {"0000002.pt", "0000004.pt"}


def test_min_improvement(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, min_improvement=0.05)
    results = []
    for step, score in [(1, 0.60), (2, 0.64), (3, 0.66)]:
        save_file(tmp_path, step)
        results.append(tracker.update_checkpoint(step, 0, None, {"composite_score": score}))
    assert results == [True, False, True]
    assert tracker.best.step == 3


def test_pending_checkpoints_are_protected(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, keep_every_n_steps=None)
    for step in (1, 2, 3):
        save_file(tmp_path, step)
        tracker.checkpoint_saved(step, tmp_path / f"{step:07d}.pt", evaluate=True)
    save_file(tmp_path, 4)
    tracker.update_checkpoint(4, 0, None, {"composite_score": 0.1})
    assert tracker.pending_steps() == [1, 2, 3]
    assert entries(tmp_path) == {f"{s:07d}.pt" for s in (1, 2, 3, 4)}
    reasons = {d.step: d.reasons for d in tracker.plan()}
    assert reasons[1] == ("pending evaluation",)
    tracker.update_checkpoint(1, 0, None, {"composite_score": 0.05})
    tracker.record_failure(2, "sampler ran out of memory")
    assert entries(tmp_path) == {f"{s:07d}.pt" for s in (3, 4)}
    failed = {r.step: r for r in tracker.records}[2]
    assert failed.status == "failed" and failed.error == "sampler ran out of memory" and failed.pruned


def test_saved_only_checkpoints_are_pruned_but_latest_kept(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=3, keep_latest=2, keep_every_n_steps=None)
    for step in range(1, 6):
        save_file(tmp_path, step)
        tracker.checkpoint_saved(step, None, evaluate=False)
    assert entries(tmp_path) == {"0000004.pt", "0000005.pt"}
    assert tracker.best is None and not (tmp_path / "best.pt").exists()


def test_pinned_and_every_n(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, keep_every_n_steps=3, pinned_steps=(2,))
    for step in range(1, 8):
        save_file(tmp_path, step)
        tracker.update_checkpoint(step, 0, None, {"composite_score": step / 10})
    assert entries(tmp_path) == {f"{s:07d}.pt" for s in (2, 3, 6, 7)}
    reasons = {d.step: d.reasons for d in tracker.plan()}
    assert reasons[2] == ("pinned",) and reasons[3] == ("every 3 steps",)
    assert reasons[7][0] == "best"


def test_dry_run_deletes_nothing(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, dry_run=True, keep_every_n_steps=None)
    for step in range(1, 5):
        save_file(tmp_path, step)
        tracker.update_checkpoint(step, 0, None, {"composite_score": step / 10})
    assert len(entries(tmp_path)) == 4
    decisions = tracker.prune()
    assert [d.step for d in decisions if not d.keep] == [1, 2, 3]
    assert any("dry run: would delete 0000001.pt" in m for m in caplog.messages)
    assert len(entries(tmp_path)) == 4
    tracker.prune(dry_run=False)
    assert entries(tmp_path) == {"0000004.pt"}


def test_rescore_replaces_and_metric_change_reranks(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path, save_top_k=5)
    for step, (comp, fid) in {1: (0.5, 10.0), 2: (0.7, 30.0), 3: (0.6, 20.0)}.items():
        save_file(tmp_path, step)
        tracker.update_checkpoint(step, 0, None, {"composite_score": comp, "fid": fid})
    assert tracker.best.step == 2
    assert tracker.update_checkpoint(2, 0, None, {"composite_score": 0.1, "fid": 30.0}) is False
    assert any("step 2 re-scored" in m for m in caplog.messages)
    assert tracker.best.step == 3
    by_fid = BestCheckpointTracker(tmp_path, metric_name="fid", higher_is_better=False, save_top_k=5, reconfigure=True)
    assert by_fid.best.step == 1 and os.readlink(tmp_path / "best.pt") == "0000001.pt"
    assert strict_json(tmp_path / "best_checkpoints.json")["metric_name"] == "fid"
    with pytest.raises(StateError, match="clip_score"):
        BestCheckpointTracker(tmp_path, metric_name="clip_score", save_top_k=5, reconfigure=True)
    assert os.readlink(tmp_path / "best.pt") == "0000001.pt"  # the refused change touched nothing


def test_decreasing_steps_out_of_order_evaluation(tmp_path: Path):
    tracker = BestCheckpointTracker(tmp_path, save_top_k=1, keep_every_n_steps=None)
    for step in (1, 2, 3):
        save_file(tmp_path, step)
        tracker.checkpoint_saved(step, None)
    tracker.update_checkpoint(3, 0, None, {"composite_score": 0.2})
    tracker.update_checkpoint(1, 0, None, {"composite_score": 0.9})  # an evaluator catching up
    tracker.update_checkpoint(2, 0, None, {"composite_score": 0.1})
    assert tracker.best.step == 1
    assert entries(tmp_path) == {"0000001.pt", "0000003.pt"}  # best + latest (the highest step)


def test_reader_writes_nothing(tmp_path: Path):
    writer = BestCheckpointTracker(tmp_path, save_top_k=1)
    save_file(tmp_path, 1)
    writer.update_checkpoint(1, 0, None, {"composite_score": 0.5})
    before = {n: (tmp_path / n).stat().st_mtime_ns for n in os.listdir(tmp_path)}
    reader = BestCheckpointTracker(tmp_path, save_top_k=1, is_writer=False)
    save_file(tmp_path, 2)
    assert reader.update_checkpoint(2, 0, None, {"composite_score": 0.9}) is True  # same answer, in memory
    reader.prune()
    assert reader.write_results() == tmp_path / "best_checkpoint_results.json"
    assert reader.export_results()["summary"]["best_step"] == 2  # the reader's view, returned, not written
    after = {n: (tmp_path / n).stat().st_mtime_ns for n in os.listdir(tmp_path) if n != "0000002.pt"}
    assert after == before
    assert writer.best.step == 1  # the writer never saw the reader's update


def test_rank_env_decides_writer(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rank1 = BestCheckpointTracker(tmp_path / "a")
    assert rank1.is_writer is False and not (tmp_path / "a").exists()
    monkeypatch.setenv("RANK", "0")
    assert BestCheckpointTracker(tmp_path / "b").is_writer is True


def test_imports_the_original_trackers_state(tmp_path: Path):
    for step in (1000, 2000):
        save_ds(tmp_path, step)
    legacy = {
        "metric_name": "composite_score", "higher_is_better": True, "save_top_k": 3,
        "checkpoints": [
            {"step": 2000, "epoch": 3, "checkpoint_path": str(tmp_path / "0002000.pt"),
             "metrics": {"composite_score": 0.7}, "timestamp": 1.0},
            {"step": 1000, "epoch": 1, "checkpoint_path": str(tmp_path / "0001000.pt"),
             "metrics": {"composite_score": 0.4}, "timestamp": 0.5},
        ],
    }
    (tmp_path / "best_checkpoints.json").write_text(json.dumps(legacy))
    tracker = BestCheckpointTracker(tmp_path)
    assert tracker.best.step == 2000 and tracker.best.path == "0002000.pt"
    assert resolved_best(tmp_path) == (tmp_path / "0002000.pt").resolve()
    assert strict_json(tmp_path / "best_checkpoints.json")["schema"] == "bestckpt.state/1"


def test_config_validation_messages(tmp_path: Path):
    with pytest.raises(ValueError, match="keep_latest must be an int >= 1.*got 0"):
        TrackerConfig(tmp_path, keep_latest=0)
    with pytest.raises(ValueError, match="save_top_k.*got 0"):
        TrackerConfig(tmp_path, save_top_k=0)
    with pytest.raises(ValueError, match="min_improvement.*got -1"):
        TrackerConfig(tmp_path, min_improvement=-1)
    with pytest.raises(ValueError, match="min_improvement.*nan"):
        TrackerConfig(tmp_path, min_improvement=math.nan)
    with pytest.raises(ValueError, match="exactly one"):
        TrackerConfig(tmp_path, filename_template="ckpt.pt")
    with pytest.raises(ValueError, match="metric_name"):
        TrackerConfig(tmp_path, metric_name="")
    with pytest.raises(TypeError, match="higher_is_better"):
        TrackerConfig(tmp_path, higher_is_better="yes")
    cfg = TrackerConfig(tmp_path, keep_every_n_steps=0, pinned_steps=[5, 1, 5])
    assert cfg.keep_every_n_steps is None and cfg.pinned_steps == (1, 5)
    assert cfg.step_filename(2000) == "0002000.pt" and cfg.step_from_name("0002000.pt") == 2000
    assert cfg.step_from_name("latest.pt") is None and cfg.step_from_name("2000.pt") is None
    assert TrackerConfig.from_dict(tmp_path, cfg.to_dict()) == cfg


def test_record_json_round_trip():
    rec = Record(step=5, epoch=1, path="0000005.pt", metrics={"a": math.nan, "b": 1.0}, status="failed", time=2.0,
                 protocol_hash="abc", error="boom", info={"k": 1}, pruned=True)
    back = Record.from_json(json.loads(json.dumps(rec.to_json(), allow_nan=True)))
    assert back.step == 5 and back.error == "boom" and back.pruned and math.isnan(back.metrics["a"])
    saved = Record(step=6, epoch=None, path="0000006.pt", metrics={}, status="saved", time=1.0, seq=7,
                   file_id=(123456789, 42))
    assert Record.from_json(json.loads(json.dumps(saved.to_json()))) == saved
    legacy = {k: v for k, v in saved.to_json().items() if k not in ("seq", "file_id")}  # an older bestckpt's record
    back = Record.from_json(legacy)
    assert back.seq == 0 and back.file_id is None
    assert Record.from_json(dict(legacy, seq=True, file_id=[1, "x"])).seq == 0  # malformed: fall back, never fail


def test_large_state_journal_path(tmp_path: Path):
    """With state_compact_bytes=0 every call appends to the journal; everything still holds."""
    from bestckpt.tracking.journal import read_state
    from bestckpt.tracking.layout import JOURNAL_FILE

    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None, state_compact_bytes=0)
    other = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None, state_compact_bytes=0)
    scores = {1: 0.3, 2: 0.8, 3: 0.5, 4: 0.1, 5: 0.6, 6: 0.2}
    for step, score in scores.items():
        save_file(tmp_path, step)
        writer = tracker if step % 2 else other  # two tracker objects take turns, as two processes would
        writer.update_checkpoint(step, 0, None, {"composite_score": score})
        if step == 4:  # checked here, well before the journal's 4 KiB compaction point (its size varies)
            assert (tmp_path / JOURNAL_FILE).exists()
            snapshot = strict_json(tmp_path / "best_checkpoints.json")
            assert len(snapshot["checkpoints"]) < 4  # the snapshot lags; the journal holds the rest
    merged = read_state(tmp_path)
    assert sorted(r["step"] for r in merged["checkpoints"]) == [1, 2, 3, 4, 5, 6] and merged["best_step"] == 2
    assert entries(tmp_path) == {"0000002.pt", "0000005.pt", "0000006.pt"}
    assert tracker.best.step == 2 and len(tracker.records) == 6 and len(other.records) == 6
    reader = BestCheckpointTracker(tmp_path, is_writer=False)
    assert [r.step for r in reader.records] == [1, 2, 3, 4, 5, 6]
    BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)  # a start compacts
    assert not (tmp_path / JOURNAL_FILE).exists()
    assert len(strict_json(tmp_path / "best_checkpoints.json")["checkpoints"]) == 6


def test_comparing_scores_of_different_protocols_warns(tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, logger="bestckpt")
    tracker = BestCheckpointTracker(tmp_path)
    for step, proto in ((1, "aaaa"), (2, "aaaa"), (3, "bbbb")):
        save_file(tmp_path, step)
        tracker.update_checkpoint(step, 0, None, {"composite_score": step / 10}, protocol_hash=proto)
    warnings = [m for m in caplog.messages if "not comparable" in m]
    assert len(warnings) == 1 and "bbbb" in warnings[0] and "aaaa" in warnings[0]
    assert tracker.best.protocol_hash == "bbbb"


def test_start_removes_a_best_link_left_when_nothing_can_be_ranked(tmp_path: Path):
    """A crash after the state write and before best.pt's removal leaves a link naming a non-best."""
    BestCheckpointTracker(tmp_path, save_top_k=2).checkpoint_saved(10, save_file(tmp_path, 10), evaluate=False)
    os.symlink("0000010.pt", tmp_path / "best.pt")  # what the interrupted commit left behind
    tracker = BestCheckpointTracker(tmp_path)
    assert tracker.best is None and not os.path.lexists(tmp_path / "best.pt")
    assert (tmp_path / "0000010.pt").is_file()  # the checkpoint itself is untouched
