"""BestCheckpointCallback with the real ``transformers.Trainer`` (tiny model, CPU).

The model (``hf_kit.TinyImageModel``) is a plain ``nn.Module``; its checkpoints are real Trainer
``checkpoint-N`` directories (``model.safetensors``, optimizer, scheduler, RNG, ``trainer_state.json``),
scored in the background worker by ``hf_kit``'s sampler and the pipeline kit's scorer. No test depends on
timing: ``trainer.train()`` returns after ``on_train_end`` closed the evaluation (waiting for the worker).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hf_kit import PairData, TinyImageModel  # noqa: E402
from pipeline_kit import TESTS_DIR, make_protocol  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torchrun_kit import run_checked  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from bestckpt.errors import ConfigError  # noqa: E402
from bestckpt.integrations.transformers import (  # noqa: E402
    BestCheckpointCallback,
    check_training_arguments,
    load_state_dict,
    resume_step,
    zero3_weights_missing,
)
from bestckpt.tracking.tracker import BestCheckpointTracker  # noqa: E402

KIT = dict(scorer_spec="pipeline_kit:make_kit_scorer")
GUIDE_TAGS = {"Evaluation/Inception_Score", "Evaluation/LPIPS", "Evaluation/FID", "Evaluation/KID",
              "Evaluation/Composite_Score", "Evaluation/IsBest"}


def _args(out: Path, **changes: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(output_dir=str(out), max_steps=10, save_steps=2, per_device_train_batch_size=8,
                                learning_rate=0.05, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=100,
                                seed=0, dataloader_num_workers=0)
    base.update(changes)
    return TrainingArguments(**base)


def _trainer(out: Path, callback: Any, **changes: Any) -> Trainer:
    evaluates = changes.get("eval_strategy", "no") != "no"
    return Trainer(TinyImageModel(), _args(out, **changes), train_dataset=PairData(),
                   eval_dataset=PairData(8) if evaluates else None, callbacks=[callback] if callback is not None else None)


def _on_disk(out: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.is_dir()}


def _expected_kept(tracker: BestCheckpointTracker, top_k: int, every: int) -> set[int]:
    """What the retention rules keep, recomputed from the records: top-k evaluated by score, the latest
    saved, every-N steps, pinned."""
    recs = tracker.records
    scored = sorted((r for r in recs if r.status == "evaluated"), key=lambda r: (-r.metrics["composite_score"], r.step))
    latest = max(recs, key=lambda r: (r.seq, r.step)).step
    return ({r.step for r in scored[:top_k]} | {latest} | {r.step for r in recs if r.step % every == 0}
            | set(tracker.config.pinned_steps))


def _tags(log_dir: Path) -> set[str]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_refuses_settings_under_which_the_trainer_deletes_or_loads_behind_bestckpt(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    callback = BestCheckpointCallback(protocol, "hf_kit:make_sampler", **KIT)
    with pytest.raises(ConfigError, match=r"save_total_limit=2.*save_total_limit=None"):
        _trainer(tmp_path / "a", callback, save_total_limit=2)
    with pytest.raises(ConfigError, match=r"load_best_model_at_end=True.*best\.pt"):
        _trainer(tmp_path / "b", callback, load_best_model_at_end=True, eval_strategy="steps", eval_steps=2)
    # added after __init__: on_init_end never reaches it, on_train_begin refuses before the first step
    trainer = _trainer(tmp_path / "c", None, save_total_limit=3)
    trainer.add_callback(callback)
    with pytest.raises(ConfigError, match="save_total_limit=3"):
        trainer.train()
    assert _on_disk(tmp_path / "c") == set()
    check_training_arguments(_args(tmp_path / "d", save_total_limit=0))  # <= 0: the Trainer never rotates
    with pytest.raises(TypeError, match="filename_template"):
        BestCheckpointCallback(protocol, "hf_kit:make_sampler", filename_template="{step}.pt")
    with pytest.raises(ValueError, match="mode must be one of"):
        BestCheckpointCallback(protocol, "hf_kit:make_sampler", mode="sometimes")


def test_zero3_detection_and_weight_loading(tmp_path: Path) -> None:
    assert zero3_weights_missing({"zero_optimization": {"stage": 3}})
    assert not zero3_weights_missing({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}})
    assert not zero3_weights_missing({"zero_optimization": {"stage": 2}}) and not zero3_weights_missing(None)
    shards = tmp_path / "checkpoint-4"
    (shards / "global_step4").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="stage3_gather_16bit_weights_on_model_save"):
        load_state_dict(shards)
    with pytest.raises(FileNotFoundError, match="not a Trainer checkpoint directory"):
        load_state_dict(tmp_path / "nothing")
    assert resume_step(tmp_path, 4) == 4 and resume_step(tmp_path, 6) is None and resume_step(tmp_path, 0) is None


def test_resume_pins_accumulate_and_other_settings_stay_checked(tmp_path: Path) -> None:
    from bestckpt.integrations.transformers import _open_tracker

    assert _open_tracker(tmp_path, {"pinned_steps": (2,), "save_top_k": 2}, 4, writer=True).config.pinned_steps == (2, 4)
    tracker = _open_tracker(tmp_path, {}, 6, writer=True)  # stored settings used; the new pin added
    assert tracker.config.pinned_steps == (2, 4, 6) and tracker.config.save_top_k == 2
    assert BestCheckpointTracker.open(tmp_path).config.pinned_steps == (2, 4, 6)  # stored: the worker obeys it too
    assert _open_tracker(tmp_path, {}, None, writer=False).config.pinned_steps == (2, 4, 6)
    with pytest.raises(ConfigError, match="save_top_k"):
        _open_tracker(tmp_path, {"save_top_k": 5}, 8, writer=True)
    assert BestCheckpointTracker.open(tmp_path).config.pinned_steps == (2, 4, 6)


def test_trainer_run_keeps_the_best_and_resumes_from_what_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   one_thread: None) -> None:
    caplog.set_level(logging.INFO)
    protocol = make_protocol(tmp_path)
    out = tmp_path / "out"
    settings = dict(save_top_k=2, keep_every_n_steps=8)
    first = BestCheckpointCallback(protocol, "hf_kit:make_sampler", **KIT, **settings)
    _trainer(out, first).train()  # saves 2..10; evaluates every 2nd (4, 8) in the worker

    tracker = BestCheckpointTracker.open(out)
    recs = {r.step: r for r in tracker.records}
    assert sorted(recs) == [2, 4, 6, 8, 10]  # every checkpoint the Trainer saved was handed over
    assert {s for s, r in recs.items() if r.status == "evaluated"} == {4, 8}
    best = max((r for r in recs.values() if r.status == "evaluated"), key=lambda r: r.metrics["composite_score"])
    assert os.readlink(out / "best.pt") == f"checkpoint-{best.step}"
    assert load_state_dict(out / "best.pt").keys() == {"w"}
    assert _on_disk(out) == _expected_kept(tracker, 2, 8) == {4, 8, 10}  # top-2, every-8, latest (= resume point)
    assert len(first.blocked_seconds) == 5 and first.evaluation is None

    # the guide's log lines (this process), files and TensorBoard tags
    for line in ("[Step 4] Evaluating model performance at step 4", "[Step 8] Evaluating model performance at step 8",
                 "🏆 New best checkpoint! Score:", "=== Best Checkpoint Summary ==="):
        assert line in caplog.text
    assert (out / "best_checkpoints.json").is_file() and (out / "best_checkpoint_results.json").is_file()
    for name in ("eval_generated_000.jpg", "eval_comparison_000.jpg", "eval_prompt_000.txt"):
        assert (out / "evaluation_samples" / "0000004" / name).is_file()
    assert GUIDE_TAGS <= _tags(out / "tensorboard_logs")

    # resume from the newest kept checkpoint (10: not evaluated, kept only as the latest so far)
    first_run_log = caplog.text
    caplog.clear()
    second = BestCheckpointCallback(protocol, "hf_kit:make_sampler", **KIT, **settings)
    trainer = _trainer(out, second, max_steps=16)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 16
    assert "resuming from" in caplog.text and "pinned" in caplog.text
    tracker = BestCheckpointTracker.open(out)
    assert tracker.config.pinned_steps == (10,)
    assert _on_disk(out) == _expected_kept(tracker, 2, 8)
    assert 10 in _on_disk(out) and 14 not in _on_disk(out)  # no rule but the pin keeps it: the checkpoint this run resumed from
    assert {r.step for r in tracker.records if r.status == "evaluated"} == {4, 8, 12, 16}
    best = tracker.best
    assert best is not None and os.readlink(out / "best.pt") == f"checkpoint-{best.step}"

    # every deletion was bestckpt's retention (logged by this process or the worker), none the Trainer's
    logs = first_run_log + caplog.text + (out / "logs" / "evaluation_worker.log").read_text()
    deleted = {s for s in range(2, 17, 2) if f"deleted checkpoint checkpoint-{s} (retention)" in logs}
    assert deleted == set(range(2, 17, 2)) - _on_disk(out) and deleted
    assert "deleted outside bestckpt" not in logs


def test_inline_mode(tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "out"
    got: list[Any] = []
    callback = BestCheckpointCallback(make_protocol(tmp_path), "hf_kit:make_sampler", mode="inline", **KIT,
                                      save_top_k=1, keep_every_n_steps=0, on_result=got.append)
    _trainer(out, callback, max_steps=8).train()
    assert [o.step for o in got] == [4, 8] and all(o.ok for o in got)
    best = max(got, key=lambda o: o.scores["composite_score"])
    assert os.readlink(out / "best.pt") == f"checkpoint-{best.step}"
    assert _on_disk(out) == {best.step, 8}


@pytest.mark.distributed
def test_two_processes_gloo(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (DDP over gloo): only world process zero registers; every process waits in
    on_save until all have written their part; the same guarantees hold."""
    protocol = make_protocol(tmp_path)
    protocol.to_file(tmp_path / "protocol.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS_DIR / "hf_trainer_worker.py"), str(tmp_path)]
    out = tmp_path / "out"

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        (tmp_path / "report.json").unlink(missing_ok=True)

    run_checked(cmd, env, 400, fresh=fresh)  # one rerun after torch's rare C++ abort (torchrun_kit)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["registered_on"] == [0]
    assert all((out / f"checkpoint-{s}" / "rng_state_1.pth").is_file() for s in _on_disk(out))
    tracker = BestCheckpointTracker.open(out)
    assert sorted(r.step for r in tracker.records) == [2, 4, 6, 8]
    assert tracker.best is not None and os.readlink(out / "best.pt") == f"checkpoint-{tracker.best.step}"
    assert _on_disk(out) == _expected_kept(tracker, 1, 1_000_000)


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_zero3_cpu(tmp_path: Path) -> None:
    """Real DeepSpeed ZeRO-3 (CPU accelerator) under the Trainer: without the gather flag a checkpoint holds only
    shards; the callback warned, the evaluation failed with the fix and is never best. With it: scored, best."""
    pytest.importorskip("deepspeed")
    make_protocol(tmp_path).to_file(tmp_path / "protocol.json")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(TESTS_DIR / "hf_zero3_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=560)  # DeepSpeed may JIT-load its shm op
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    shards, gather = report["shards"], report["gather"]
    assert "model.safetensors" not in shards["files"] and "global_step4" in shards["files"]
    assert any("stage3_gather_16bit_weights_on_model_save" in w for w in shards["warnings"])
    assert shards["status"] == "failed" and "stage3_gather_16bit_weights_on_model_save" in shards["error"]
    assert shards["best"] is None
    assert "model.safetensors" in gather["files"] and gather["warnings"] == []
    assert gather["status"] == "evaluated" and gather["best"] == "checkpoint-4"


def test_sinks_option_logs_into_a_run_linked_to_the_training_run(tmp_path: Path, mlflow_store: dict[str, Any],
                                                                 one_thread: None) -> None:
    """``sinks=`` passes through the callback: bestckpt's own MLflow run, nested under the training run, gets the
    scores at the checkpoints' steps, the best pointer and the summary, and is ended at the end of training."""
    from mlflow_kit import check_run, child_run, training_run

    client, parent = mlflow_store["client"], training_run(mlflow_store, "transformers")
    protocol = make_protocol(tmp_path)
    out = tmp_path / "out"
    callback = BestCheckpointCallback(protocol, "hf_kit:make_sampler", mode="inline", **KIT, save_top_k=1,
                                      keep_every_n_steps=0,
                                      sinks={"mlflow": {"tracking_uri": mlflow_store["uri"], "parent_run_id": parent}})
    _trainer(out, callback, max_steps=8).train()
    tracker = BestCheckpointTracker.open(out)
    assert sorted(r.step for r in tracker.records if r.status == "evaluated") == [4, 8]  # every 2nd checkpoint
    child = child_run(client, parent)
    assert child.info.status == "FINISHED"
    check_run(client, child.info.run_id, tracker, protocol, weights="online")
