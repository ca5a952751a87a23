"""Checkpoint layouts (``docs/layouts.md``): each stack's names, epoch tags registered by their marker,
templates that cannot identify a step refused, and every name outside the layout never touched."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bestckpt.errors import ConfigError
from bestckpt.runners.sidecar import SidecarWatcher
from bestckpt.tracking import layout
from bestckpt.tracking.config import TrackerConfig
from bestckpt.tracking.tracker import BestCheckpointTracker

M = "composite_score"
HUNYUAN, DIFFUSERS, LIGHTNING = "{step:07d}.pt", "checkpoint-{step}", "epoch={epoch}-step={step}.ckpt"

#: names outside every layout, as the stacks and users leave them (relative path -> bytes; links separately)
FOREIGN = {
    "latest": b"latest.pt",  # DeepSpeed's pointer, here naming HunyuanDiT's latest.pt tag
    "latest.pt/mp_rank_00_model_states.pt": b"latest module",
    "final.pt/mp_rank_00_model_states.pt": b"final module",
    "e0001.pt/mp_rank_00_model_states.pt": b"epoch tag without a marker",
    "random_states_0.pkl": b"rng",
    "scheduler.bin": b"scheduler",
    "checkpoints/checkpoint_0/model.safetensors": b"accelerate automatic naming",
    "checkpoint-final/model.safetensors": b"not a step",
    "last.ckpt": b"lightning last",
    "zero_to_fp32.py": b"print('consolidate')\n",
    "notes.txt": b"the user's notes",
    "tensorboard_logs/events.out.tfevents.1": b"events",
}
FOREIGN_LINKS = {"user_link.pt": "notes.txt"}


def populate_foreign(d: Path) -> None:
    for rel, data in FOREIGN.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    for name, target in FOREIGN_LINKS.items():
        os.symlink(target, d / name)


def foreign_snapshot(d: Path) -> dict[str, object]:
    """Every foreign path (and its parents' listings): bytes, mtime, mode; links by target."""
    snap: dict[str, object] = {}
    for rel in FOREIGN:
        st = os.lstat(d / rel)
        snap[rel] = ((d / rel).read_bytes(), st.st_mtime_ns, st.st_mode, st.st_ino)
        parent = Path(rel).parent
        while str(parent) != ".":
            snap[f"{parent}/"] = sorted(os.listdir(d / parent))
            parent = parent.parent
    for name in FOREIGN_LINKS:
        snap[name] = os.readlink(d / name)
    return snap


def save(d: Path, template: str, step: int, epoch: int) -> Path:
    """A checkpoint as the stack writes it: HunyuanDiT's tag dir, accelerate's folder, Lightning's file."""
    path = d / template.format(step=step, epoch=epoch)
    if template == LIGHTNING:
        path.write_bytes(f"lightning step {step}".encode())
        return path
    path.mkdir()
    (path / "model.bin").write_bytes(f"step {step}".encode())
    layout.mark_complete(path, step=step)
    return path


def save_epoch_tag(d: Path, epoch: int, step: int) -> Path:
    """HunyuanDiT's epoch tag: named without its step, the step recorded by the marker."""
    path = d / f"e{epoch:04d}.pt"
    path.mkdir()
    (path / "mp_rank_00_model_states.pt").write_bytes(f"epoch {epoch} step {step}".encode())
    layout.mark_complete(path, step=step)
    return path


def score_of(step: int) -> float:
    return {100: 0.3, 200: 0.9, 250: 0.2, 300: 0.4, 400: 0.5, 500: 0.1, 600: 0.95, 650: 0.35}[step]


@pytest.mark.parametrize("template", [HUNYUAN, DIFFUSERS, LIGHTNING])
def test_names_outside_the_layout_are_never_touched(tmp_path: Path, template: str, caplog):
    """Registration, prune, a restart (adoption), the sidecar's scan and a rebuild after losing the state:
    every foreign name stays byte for byte, and the registered checkpoints follow retention."""
    caplog.set_level(logging.INFO, logger="bestckpt")
    d = tmp_path / "run"
    d.mkdir()
    populate_foreign(d)
    before = foreign_snapshot(d)
    kw = dict(save_top_k=1, keep_every_n_steps=None, filename_template=template)
    t = BestCheckpointTracker(d, M, True, **kw)
    for step in (100, 200, 300, 400, 500):
        epoch = step // 200
        t.update_checkpoint(step, epoch, save(d, template, step, epoch), {M: score_of(step)})
        if template == HUNYUAN and step == 200:  # the stock script's epoch tag, registered with its step
            t.update_checkpoint(250, 1, save_epoch_tag(d, 2, 250), {M: score_of(250)})
    t.prune()
    assert t.best is not None and t.best.step == 200
    registered = {template.format(step=s, epoch=s // 200) for s in (200, 500)}
    assert registered <= set(os.listdir(d))
    assert not (d / template.format(step=300, epoch=1)).exists()
    if template == HUNYUAN:
        assert not (d / "e0002.pt").exists()  # registered by its path: pruned like any checkpoint

    # a trainer wrote two more and stopped before registering them; a restart adopts them, the sidecar scores them
    save(d, template, 600, 3)
    if template == HUNYUAN:
        save_epoch_tag(d, 3, 650)
    del t
    t2 = BestCheckpointTracker(d, M, True)
    evaluated: list[tuple[int, str]] = []

    def evaluate_and_record(tracker, step, path, epoch):
        evaluated.append((step, Path(path).name))
        tracker.update_checkpoint(step, epoch, str(path), {M: score_of(step)})

    watcher = SidecarWatcher(t2, SimpleNamespace(protocol=SimpleNamespace(hash="p" * 64),
                                                 evaluate_and_record=evaluate_and_record), adopt_after=0)
    watcher.run_once()
    expected = [(600, template.format(step=600, epoch=3))] + ([(650, "e0003.pt")] if template == HUNYUAN else [])
    assert evaluated == expected
    assert t2.best is not None and t2.best.step == 600 and os.readlink(d / "best.pt") == expected[0][1]

    # the state is lost: a restart rebuilds it from the layout's entries only
    for name in (layout.STATE_FILE, layout.JOURNAL_FILE):
        if (d / name).exists():
            (d / name).unlink()
    del t2
    t3 = BestCheckpointTracker(d, M, True, **kw)
    rebuilt = {r.step: r.path for r in t3.records}
    assert rebuilt == dict(expected)  # the marked epoch tag too, as its step
    t3.prune()
    assert foreign_snapshot(d) == before
    assert "e0001.pt" in caplog.text and "mark_complete(path, step=STEP)" in caplog.text
    assert not any("final.pt" in r.getMessage() or "last.ckpt" in r.getMessage()
                   for r in caplog.records if r.levelno >= logging.WARNING)


def test_the_marker_records_the_step_and_old_markers_still_mean_complete(tmp_path: Path):
    tag = tmp_path / "e0004.pt"
    tag.mkdir()
    marker = layout.mark_complete(tag, step=1234)
    assert json.loads(marker.read_text()) == {"bestckpt": "complete", "step": 1234}
    assert layout.marker_step(tag) == 1234
    old = tmp_path / "0000100.pt"
    old.mkdir()
    (old / layout.COMPLETE_MARKER).write_text("complete\n")  # written by earlier versions
    assert layout.marker_step(old) is None
    assert layout.is_checkpoint_complete(old, later_exists=False)
    layout.mark_complete(old)
    assert (old / layout.COMPLETE_MARKER).read_text() == "complete\n"  # without a step: the marker as ever
    assert layout.marker_step(old) is None and layout.is_checkpoint_complete(old, later_exists=False)
    for bad in (-1, True, "5", 1.0):
        with pytest.raises(ValueError, match="non-negative int"):
            layout.mark_complete(tag, step=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [b"{not json", b'{"step": -3}', b'{"step": true}', b"[1]", b"x" * 5000])
def test_a_marker_that_is_not_ours_records_no_step(tmp_path: Path, content: bytes):
    tag = tmp_path / "e0001.pt"
    tag.mkdir()
    (tag / layout.COMPLETE_MARKER).write_bytes(content)
    assert layout.marker_step(tag) is None
    assert layout.step_entries(tmp_path, TrackerConfig(tmp_path).step_from_name) == []


def test_a_linked_marker_records_no_step(tmp_path: Path):
    (tmp_path / "elsewhere.json").write_text('{"step": 7}')
    tag = tmp_path / "e0001.pt"
    tag.mkdir()
    os.symlink(tmp_path / "elsewhere.json", tag / layout.COMPLETE_MARKER)
    assert layout.marker_step(tag) is None


def test_step_entries_takes_marked_tags_and_the_template_wins_a_shared_step(tmp_path: Path, caplog):
    parse = TrackerConfig(tmp_path).step_from_name
    (tmp_path / "0000300.pt").write_bytes(b"x")
    save_epoch_tag(tmp_path, 1, 300)  # same step as a template-named entry
    save_epoch_tag(tmp_path, 2, 450)
    link = tmp_path / "e0009.pt"
    os.symlink(tmp_path / "e0002.pt", link)  # a link to a marked tag is not a checkpoint of its own
    caplog.set_level(logging.WARNING, logger="bestckpt")
    assert layout.step_entries(tmp_path, parse) == [(300, "0000300.pt"), (450, "e0002.pt")]
    assert "an entry named by filename_template holds that step" in caplog.text
    assert [(s, p.name, c) for s, p, c in layout.find_checkpoints(tmp_path, parse)] == [
        (300, "0000300.pt", True), (450, "e0002.pt", True)]


def test_deepspeed_latest_naming_a_registered_epoch_tag_protects_it(tmp_path: Path):
    t = BestCheckpointTracker(tmp_path, M, True, 1, keep_every_n_steps=None)
    t.update_checkpoint(250, 1, save_epoch_tag(tmp_path, 2, 250), {M: 0.1})
    (tmp_path / "latest").write_text("e0002.pt")
    for step in (300, 400):
        t.update_checkpoint(step, 2, save(tmp_path, HUNYUAN, step, 2), {M: step / 1000})
    assert (tmp_path / "e0002.pt").is_dir()
    reasons = {d.step: d.reasons for d in t.plan()}
    assert "named by DeepSpeed 'latest'" in reasons[250]


def test_lightning_template_names_the_epoch_too(tmp_path: Path):
    cfg = TrackerConfig(tmp_path, filename_template=LIGHTNING)
    assert cfg.step_from_name("epoch=3-step=1200.ckpt") == 1200
    for name in ("last.ckpt", "epoch=03-step=1200.ckpt", "epoch=3-step=1200-v1.ckpt", "epoch=x-step=1.ckpt"):
        assert cfg.step_from_name(name) is None
    assert cfg.step_filename(1200, epoch=3) == "epoch=3-step=1200.ckpt"
    with pytest.raises(ConfigError, match="pass the checkpoint's path"):
        cfg.step_filename(1200)
    t = BestCheckpointTracker(tmp_path, M, True, 1, filename_template=LIGHTNING, keep_every_n_steps=None)
    save(tmp_path, LIGHTNING, 100, 0)
    t.update_checkpoint(100, 0, None, {M: 0.5})  # the name comes from the template and the epoch
    assert t.best is not None and t.best.path == "epoch=0-step=100.ckpt"
    save(tmp_path, LIGHTNING, 200, 1)
    with pytest.raises(ConfigError, match="names the epoch too"):
        t.update_checkpoint(200, None, None, {M: 0.6})
    t.update_checkpoint(200, None, tmp_path / "epoch=1-step=200.ckpt", {M: 0.6})
    assert sorted(os.listdir(tmp_path)) == sorted(["epoch=1-step=200.ckpt", "best.pt", *OWN_WRITTEN])


OWN_WRITTEN = ["best_checkpoints.json", "best_checkpoints.json.lock", "best_checkpoint_results.json"]


@pytest.mark.parametrize("template, why", [
    ("{step}{epoch}.pt", "not delimited from the following field"),
    ("{epoch}{step}.pt", "not delimited from the following field"),
    ("{step}12{epoch}.pt", "not delimited from the following field"),
    ("{step:x}.pt", "does not give the step back"),
    ("{step:,}.pt", "does not give the step back"),
    ("{step:>9}.pt", "does not give the step back"),
    ("{step!s}.pt", "conversion"),
    ("e{epoch:04d}.pt", "carries no step"),
    ("ckpt.pt", "exactly one '{step}' field"),
    ("{step}-{step}.pt", "exactly one '{step}' field"),
    ("{step}-{epoch}-{epoch}", "exactly one '{step}' field"),
    ("{step}-{rank}", "exactly one '{step}' field"),
    ("{step:s}.pt", "formatting an int fails"),
])
def test_a_template_that_cannot_identify_steps_is_refused_at_construction(tmp_path: Path, template: str, why: str):
    with pytest.raises(ConfigError) as info:
        BestCheckpointTracker(tmp_path, filename_template=template)
    message = str(info.value)
    assert why in message and repr(template) in message and "'{step:07d}.pt'" in message
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("template, name, step", [
    (HUNYUAN, "0001200.pt", 1200), (DIFFUSERS, "checkpoint-1200", 1200), ("global_step{step}", "global_step7", 7),
    ("{step}5.pt", "75.pt", 7), ("step{step:06d}-e{epoch:03d}.bin", "step000070-e002.bin", 70),
])
def test_templates_that_identify_steps(tmp_path: Path, template: str, name: str, step: int):
    assert TrackerConfig(tmp_path, filename_template=template).step_from_name(name) == step


def test_accelerate_folders_without_markers_are_evaluated_once_a_later_one_exists(tmp_path: Path):
    """A plain ``accelerator.save_state`` run (no bestckpt in the trainer, no marker): the sidecar takes a
    ``checkpoint-{step}`` folder once a later one exists (the earlier save has returned), then retention prunes."""
    t = BestCheckpointTracker(tmp_path, M, True, 1, keep_every_n_steps=None, filename_template=DIFFUSERS)
    seen: list[int] = []

    def evaluate_and_record(tracker, step, path, epoch):
        seen.append(step)
        tracker.update_checkpoint(step, epoch, str(path), {M: {100: 0.2, 200: 0.8, 300: 0.5}[step]})

    watcher = SidecarWatcher(t, SimpleNamespace(protocol=SimpleNamespace(hash="p" * 64),
                                                evaluate_and_record=evaluate_and_record), adopt_after=0)
    for step in (100, 200, 300):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w")
        (folder / "random_states_0.pkl").write_bytes(b"rng")
        watcher.run_once()
    assert seen == [100, 200]  # checkpoint-300 may still be being written
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-200", "checkpoint-300"]
    assert os.readlink(tmp_path / "best.pt") == "checkpoint-200"
