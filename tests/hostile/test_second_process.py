"""Hostile inputs, class "a second process with other settings" (issue 9, R3: one configuration per directory).

A trainer keeps top-3 with a pinned step; other processes (an evaluation script, ``bestckpt evaluate``,
the background worker, another rank) open the same directory. Settings that decide deletion must never
silently diverge: what is not passed comes from the stored config, an explicit difference is refused with
a ConfigError naming stored vs given and the fixes, ``reconfigure=True`` changes them on purpose (logged),
and a running tracker adopts a config another process stored (warning once).

Every test asserts that nothing needed is deleted and nothing outside the checkpoint directory changes;
subprocesses run under a timeout.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestckpt.errors import ConfigError
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.tracker import BestCheckpointTracker

SCORES = [(100, 0.1), (200, 0.5), (300, 0.9), (400, 0.3), (500, 0.7)]


def save(directory: Path, step: int, name: str | None = None) -> Path:
    path = directory / (name or f"{step:07d}.pt")
    path.write_bytes(b"weights %d" % step)
    return path


def on_disk(directory: Path) -> set[str]:
    return {n for n in os.listdir(directory) if n[:1].isdigit() or n.startswith("ckpt-")}


def stored(directory: Path) -> dict:
    return json.loads((directory / "best_checkpoints.json").read_text())["tracker_config"]


def outside(tmp_path: Path, directory: Path) -> dict[str, tuple[int, int]]:
    """Everything under tmp_path except the checkpoint directory: (size, mtime_ns) by path."""
    out = {}
    for root, dirs, files in os.walk(tmp_path):
        if Path(root) == directory or directory in Path(root).parents:
            continue
        for name in files + dirs:
            if Path(root) / name == directory:
                continue
            st = os.lstat(Path(root) / name)
            out[str(Path(root) / name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture()
def trainer(tmp_path: Path) -> tuple[Path, BestCheckpointTracker]:
    """The trainer: top-3, step 100 pinned, no keep-every; 400 pruned; best 300; latest 500."""
    (tmp_path / "neighbour.txt").write_text("not ours")
    d = tmp_path / "ckpt"
    t = BestCheckpointTracker(d, save_top_k=3, pinned_steps=[100], keep_every_n_steps=None)
    for step, score in SCORES:
        save(d, step)
        t.update_checkpoint(step, 1, None, {"composite_score": score, "fid": 50.0 - 40.0 * score})
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}
    return d, t


def test_second_tracker_with_defaults_keeps_pins_and_top3(tmp_path: Path, trainer):
    d, _ = trainer
    before = outside(tmp_path, d)
    second = BestCheckpointTracker(d)  # an evaluation script: defaults everywhere
    assert second.config.save_top_k == 3 and second.config.pinned_steps == (100,)
    assert second.config.keep_every_n_steps is None
    save(d, 600)
    second.update_checkpoint(600, 2, None, {"composite_score": 0.2})
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt", "0000600.pt"}
    assert stored(d)["save_top_k"] == 3 and stored(d)["pinned_steps"] == [100]
    assert os.readlink(d / "best.pt") == "0000300.pt"
    assert outside(tmp_path, d) == before


def test_explicit_save_top_k_1_is_refused_naming_stored_and_given(tmp_path: Path, trainer):
    d, _ = trainer
    state = (d / "best_checkpoints.json").read_bytes()
    before = outside(tmp_path, d)
    with pytest.raises(ConfigError) as info:
        BestCheckpointTracker(d, save_top_k=1)
    msg = str(info.value)
    assert "save_top_k" in msg and "3" in msg and "1" in msg and str(d) in msg
    assert "reconfigure=True" in msg and "bestckpt prune" in msg  # the fixes: API and CLI
    assert (d / "best_checkpoints.json").read_bytes() == state  # nothing written
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}
    assert outside(tmp_path, d) == before


def test_dropping_the_pin_explicitly_is_refused(trainer):
    d, _ = trainer
    with pytest.raises(ConfigError, match=r"pinned_steps.*\[100\].*\[\]"):
        BestCheckpointTracker(d, pinned_steps=())
    assert (d / "0000100.pt").exists()


def test_reconfigure_true_changes_the_stored_config_and_logs_old_and_new(trainer, caplog):
    d, _ = trainer
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = BestCheckpointTracker(d, save_top_k=1, reconfigure=True)
    assert any("save_top_k" in m and "3 -> 1" in m for m in caplog.messages), caplog.messages
    assert stored(d)["save_top_k"] == 1 and stored(d)["pinned_steps"] == [100]  # pins kept from the store
    save(d, 600)
    t.update_checkpoint(600, 2, None, {"composite_score": 0.2})
    assert on_disk(d) == {"0000100.pt", "0000300.pt", "0000600.pt"}  # pinned, best, latest
    assert os.readlink(d / "best.pt") == "0000300.pt"


def test_running_trainer_adopts_another_process_reconfiguration_warning_once(trainer, caplog):
    d, t = trainer
    BestCheckpointTracker(d, save_top_k=2, reconfigure=True)  # e.g. bestckpt prune --reconfigure --yes
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="bestckpt")
    for step, score in ((600, 0.95), (700, 0.05), (800, 0.06)):
        save(d, step)
        t.update_checkpoint(step, 2, None, {"composite_score": score})
    assert t.config.save_top_k == 2 and t.config.pinned_steps == (100,)
    adopted = [m for m in caplog.messages if "another process" in m]
    assert len(adopted) == 1 and "save_top_k" in adopted[0] and "3 -> 2" in adopted[0], caplog.messages
    assert stored(d)["save_top_k"] == 2  # the trainer did not restore its own top-3
    assert on_disk(d) == {"0000100.pt", "0000300.pt", "0000600.pt", "0000800.pt"}


def test_reader_rank_adopts_a_reconfiguration_in_memory(trainer):
    d, _ = trainer
    rank1 = BestCheckpointTracker(d, save_top_k=3, pinned_steps=[100], keep_every_n_steps=None, is_writer=False)
    BestCheckpointTracker(d, save_top_k=1, reconfigure=True)
    deleted = {x.step for x in rank1.plan() if not x.keep}
    assert rank1.config.save_top_k == 1 and deleted == {200}  # same answers as the writer, writes nothing
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}


def test_second_process_with_defaults_keeps_lower_is_better_ranking(tmp_path: Path):
    d = tmp_path / "ckpt"
    t = BestCheckpointTracker(d, metric_name="fid", higher_is_better=False, save_top_k=2, keep_every_n_steps=None)
    for step, fid in ((100, 30.0), (200, 10.0), (300, 20.0)):
        save(d, step)
        t.update_checkpoint(step, 0, None, {"fid": fid, "composite_score": fid / 100})
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bestckpt.tracking.tracker import BestCheckpointTracker\n"
        "d = Path(sys.argv[1]); (d / '0000400.pt').write_bytes(b'w')\n"
        "t = BestCheckpointTracker(d)\n"
        "t.update_checkpoint(400, 0, None, {'fid': 25.0, 'composite_score': 0.99})\n"
        "print(t.config.metric_name, t.config.higher_is_better, t.best.step)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["fid", "False", "200"]
    assert os.readlink(d / "best.pt") == "0000200.pt"
    assert on_disk(d) == {"0000200.pt", "0000300.pt", "0000400.pt"}  # top-2 by fid + latest
    assert stored(d)["metric_name"] == "fid" and stored(d)["higher_is_better"] is False


def test_metric_change_needs_reconfigure(trainer, caplog):
    d, _ = trainer
    with pytest.raises(ConfigError) as info:
        BestCheckpointTracker(d, metric_name="fid", higher_is_better=False)
    msg = str(info.value)
    assert "metric_name" in msg and "'composite_score'" in msg and "'fid'" in msg and "higher_is_better" in msg
    assert os.readlink(d / "best.pt") == "0000300.pt"
    caplog.set_level(logging.WARNING, logger="bestckpt")
    by_fid = BestCheckpointTracker(d, metric_name="fid", higher_is_better=False, reconfigure=True)
    assert by_fid.best.step == 300 and stored(d)["metric_name"] == "fid"  # fid = 50 - 40 * score
    assert any("metric_name" in m and "composite_score" in m and "fid" in m for m in caplog.messages)


def test_evaluate_and_watch_open_a_lower_is_better_run_without_clobbering(tmp_path: Path):
    from bestckpt.cli import build_parser
    from bestckpt.cli.evaluate import open_tracker

    d = tmp_path / "ckpt"
    BestCheckpointTracker(d, metric_name="lpips", higher_is_better=False, save_top_k=2, pinned_steps=[7],
                          min_improvement=0.01, keep_latest=2)
    want = stored(d)
    for cmd in ("evaluate", "watch"):
        args = build_parser().parse_args([cmd, str(d), "--protocol", "p.json", "--sampler", "m:f"])
        tracker = open_tracker(args)
        assert tracker.config.to_dict() == TrackerConfig.from_dict(d, want).to_dict()
        assert stored(d) == want
    args = build_parser().parse_args(["evaluate", str(d), "--protocol", "p", "--sampler", "m:f", "--higher-is-better"])
    with pytest.raises(ConfigError, match="higher_is_better"):
        open_tracker(args)
    assert stored(d) == want


def test_background_worker_opens_with_the_stored_config_not_its_stale_copy(trainer):
    from bestckpt.runners.worker import _tracker_from_config

    d, t = trainer
    stale = t.config  # what the trainer pickled into the worker's spec
    BestCheckpointTracker(d, save_top_k=2, reconfigure=True)  # reconfigured before the worker started
    worker = _tracker_from_config(stale)
    assert worker.config.save_top_k == 2 and worker.config.pinned_steps == (100,)
    assert stored(d)["save_top_k"] == 2
    worker.prune()
    assert on_disk(d) == {"0000100.pt", "0000300.pt", "0000500.pt"}  # pinned, top-2, latest


def test_open_reads_the_store_and_refuses_explicit_differences(trainer):
    d, _ = trainer
    state = (d / "best_checkpoints.json").read_bytes()
    reader = BestCheckpointTracker.open(d)
    assert reader.is_writer is False and reader.config.pinned_steps == (100,) and reader.save_top_k == 3
    with pytest.raises(ConfigError, match="save_top_k"):
        BestCheckpointTracker.open(d, save_top_k=1)
    preview = BestCheckpointTracker.open(d, save_top_k=1, reconfigure=True)  # read-only: a what-if
    assert {x.step for x in preview.plan() if not x.keep} == {200}
    assert (d / "best_checkpoints.json").read_bytes() == state


def test_dry_run_is_per_process_not_stored(tmp_path: Path):
    d = tmp_path / "ckpt"
    preview = BestCheckpointTracker(d, save_top_k=1, keep_every_n_steps=None, dry_run=True)
    for step, score in SCORES[:3]:
        save(d, step)
        preview.update_checkpoint(step, 0, None, {"composite_score": score})
    assert len(on_disk(d)) == 3  # the dry run deleted nothing
    real = BestCheckpointTracker.open(d, is_writer=True)
    assert real.config.dry_run is False and real.config.save_top_k == 1
    real.prune()
    assert on_disk(d) == {"0000300.pt"}
    assert BestCheckpointTracker(d, dry_run=True).config.dry_run is True  # no conflict: not stored


def test_explicit_values_equal_to_the_stored_ones_are_accepted(trainer):
    d, _ = trainer
    t = BestCheckpointTracker(d, metric_name="composite_score", save_top_k=3, pinned_steps=[100, 100],
                              keep_every_n_steps=0, min_improvement=0, keep_latest=1)
    assert t.config.pinned_steps == (100,) and t.config.keep_every_n_steps is None
    cfg = TrackerConfig(d, save_top_k=3, pinned_steps=(100,), keep_every_n_steps=None)
    assert BestCheckpointTracker(config=cfg).config == cfg


def test_invalid_stored_value_is_a_clear_error_and_reconfigure_repairs_it(tmp_path: Path, trainer):
    d, _ = trainer
    path = d / "best_checkpoints.json"
    data = json.loads(path.read_text())
    data["tracker_config"]["save_top_k"] = 0
    data["save_top_k"] = 0
    path.write_text(json.dumps(data))
    before = outside(tmp_path, d)
    with pytest.raises(ConfigError) as info:
        BestCheckpointTracker(d)
    msg = str(info.value)
    assert "best_checkpoints.json" in msg and "save_top_k" in msg and "got 0" in msg and "reconfigure=True" in msg
    with pytest.raises(ConfigError, match="save_top_k"):
        BestCheckpointTracker(d, save_top_k=2)  # differs from the stored (invalid) value: still on purpose only
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}
    BestCheckpointTracker(d, save_top_k=2, reconfigure=True).prune()
    assert stored(d)["save_top_k"] == 2
    assert on_disk(d) == {"0000100.pt", "0000300.pt", "0000500.pt"}
    assert outside(tmp_path, d) == before


def test_second_tracker_uses_the_stored_filename_template(tmp_path: Path):
    d = tmp_path / "ckpt"
    cfg = TrackerConfig(d, filename_template="ckpt-{step}.bin", save_top_k=2, keep_every_n_steps=None)
    first = BestCheckpointTracker(config=cfg)
    save(d, 100, "ckpt-100.bin")
    first.checkpoint_saved(100)
    second = BestCheckpointTracker(d)
    save(d, 200, "ckpt-200.bin")
    second.checkpoint_saved(200)  # path from the stored template, not the default {step:07d}.pt
    assert [r.path for r in second.records] == ["ckpt-100.bin", "ckpt-200.bin"]
    assert on_disk(d) == {"ckpt-100.bin", "ckpt-200.bin"}


def test_state_lost_then_explicit_settings_are_accepted(trainer):
    d, _ = trainer
    os.rename(d / "best_checkpoints.json", d.parent / "state-moved-away.json")
    t = BestCheckpointTracker(d, save_top_k=1, pinned_steps=[200])  # nothing stored: nothing to contradict
    assert t.config.save_top_k == 1 and stored(d)["pinned_steps"] == [200]
    assert on_disk(d) == {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}  # recovered: protected
