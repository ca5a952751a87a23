"""The W&B sink with the real wandb in offline mode (no network), read back from the run's own files.

What is read back (``tests/support/wandb_offline.py``: the ``.wandb`` transaction log parsed with wandb's own
protobuf records, plus the run's ``files/`` folder): the metric definitions (``Evaluation/*`` against
``Evaluation/step``), every history row (scalars, the step metric's value, image entries with captions and
file names), the summary updates (the best pointer, the summary block), the files the run saved, artifact
records (name, type, requested aliases, files). Not readable offline: what the W&B server does with them
(charts, alias ``best`` moving between artifact versions, resuming a run by id): documented, not tested.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from wandb_offline import OfflineRun, read_offline_runs

from bestckpt.sinks.base import EvaluationEvent, make_sinks
from bestckpt.sinks.wandb import BEST_KEY, COMPARISONS_KEY, GRID_KEY, STEP_METRIC, WandbSink

pytest.importorskip("wandb")



def _samples(root: Path, step: int, prompts: list[str]) -> list[tuple[Path, str]]:
    """Evaluation images as bestckpt.evaluation.samples writes them, then the event's (file, caption) list."""
    import torch

    from bestckpt.evaluation.samples import write_evaluation_samples
    from bestckpt.sinks.base import evaluation_images

    g = torch.Generator().manual_seed(step)
    images = torch.randint(0, 256, (len(prompts), 3, 16, 16), generator=g, dtype=torch.uint8)
    refs = [torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8) for _ in prompts]
    write_evaluation_samples(root, step, images, prompts, refs)
    return evaluation_images(root, step)


def _event(step: int, fid: float, *, is_best: bool, images: Sequence[tuple[Path, str]] = (), **kw: object
           ) -> EvaluationEvent:
    scores = {"clip_score": 0.25 + step / 1000, "lpips": 0.5, "inception_score": 2.0, "fid": fid, "kid": 0.01,
              "composite_score": 1.0 - fid / 100, "broken_metric": None}
    return EvaluationEvent(step=step, scores=scores, epoch=step // 10, intervals={"fid": (fid - 1, fid + 1)},
                           protocol_hash="proto123", weights="ema", is_best=is_best, images=tuple(images),
                           path=f"/ckpt/{step:07d}.pt", **kw)  # type: ignore[arg-type]


def _only_run(wandb_dir: Path) -> OfflineRun:
    (run,) = read_offline_runs(wandb_dir)
    return run


def _eval_rows(run: OfflineRun) -> dict[int, dict[str, object]]:
    rows = run.rows_with(STEP_METRIC)
    by_step = {int(r[STEP_METRIC]): r for r in rows}  # type: ignore[call-overload]
    assert len(by_step) == len(rows), f"an evaluation was logged twice: {[r[STEP_METRIC] for r in rows]}"
    return by_step


def test_own_run_logs_every_scalar_at_its_training_step_images_best_pointer_and_results(offline: Path) -> None:
    samples = offline / "evaluation_samples"
    ev20 = _event(20, 30.0, is_best=True, images=_samples(samples, 20, ["a red circle", "a blue square"]))
    ev10 = _event(10, 40.0, is_best=False, images=_samples(samples, 10, ["a red circle", "a blue square"]))
    results = offline / "best_checkpoint_results.json"
    results.write_text(json.dumps({"best_step": 20}), encoding="utf-8")

    sink = WandbSink(project="bestckpt-test", group="exp-1", experiment_dir=offline)
    sink.log_evaluation(ev20)
    sink.log_evaluation(ev10)  # arrives late: a smaller training step after a larger one
    sink.log_evaluation(EvaluationEvent(step=30, error="sampler crashed: CUDA OOM"))
    sink.log_best(20, "/ckpt/0000020.pt", dict(ev20.scores))
    sink.finish({"best_step": 20, "best_score": 0.7, "ranking": [{"step": s} for s in range(15)]}, results)
    sink.close()
    sink.close()  # idempotent

    run = _only_run(offline)
    assert (run.exited, run.project, run.group, run.job_type) == (True, "bestckpt-test", "exp-1",
                                                                   "bestckpt-evaluation")
    assert {"name": STEP_METRIC, "glob_name": "", "step_metric": "", "hidden": True} in run.metrics
    assert {"name": "", "glob_name": "Evaluation/*", "step_metric": STEP_METRIC, "hidden": False} in run.metrics
    rows = _eval_rows(run)
    assert sorted(rows) == [10, 20]  # the failed evaluation logs no score
    for ev in (ev10, ev20):
        row = rows[ev.step]
        assert row["Evaluation/CLIP_Score"] == pytest.approx(ev.scores["clip_score"])
        for tag, name in [("Evaluation/LPIPS", "lpips"), ("Evaluation/Inception_Score", "inception_score"),
                          ("Evaluation/FID", "fid"), ("Evaluation/KID", "kid"),
                          ("Evaluation/Composite_Score", "composite_score")]:
            assert row[tag] == pytest.approx(ev.scores[name]), tag
        assert row["Evaluation/FID_CI_low"] == ev.scores["fid"] - 1  # type: ignore[operator]
        assert row["Evaluation/FID_CI_high"] == ev.scores["fid"] + 1  # type: ignore[operator]
        assert row["Evaluation/IsBest"] == (1 if ev.is_best else 0)
        assert row["Evaluation/protocol"] == "proto123" and row["Evaluation/weights"] == "ema"
        assert row["Evaluation/epoch"] == ev.step // 10
        assert not any("broken_metric" in k for k in row)  # a failed metric: no made-up value
        # per-prompt comparisons, captioned with their prompts, then the progress grid
        captions = row[f"{COMPARISONS_KEY}/captions"]
        assert captions == [c for p, c in ev.images if p.name != "progress_grid.jpg"]
        assert "a red circle" in captions[0] and "a blue square" in captions[1]  # type: ignore[index]
        assert "progress grid" in str(row[f"{GRID_KEY}/caption"])
        for name in [*row[f"{COMPARISONS_KEY}/filenames"], row[f"{GRID_KEY}/path"]]:  # type: ignore[misc]
            assert (run.folder / "files" / str(name)).is_file() and str(name) in run.files
    assert run.summary[BEST_KEY] == {"step": 20, "path": "/ckpt/0000020.pt",
                                     "scores": {k: v for k, v in ev20.scores.items() if v is not None}}
    assert run.summary["bestckpt/failed"] == {"30": "sampler crashed: CUDA OOM"}
    assert run.summary["bestckpt"]["best_step"] == 20 and len(run.summary["bestckpt"]["ranking"]) == 10
    assert "best_checkpoint_results.json" in run.files
    assert json.loads((run.folder / "files" / "best_checkpoint_results.json").read_text()) == {"best_step": 20}
    assert run.artifacts == []  # no upload unless asked


def test_logging_into_the_training_run_never_refuses_or_overwrites_anything(offline: Path) -> None:
    import wandb

    train = wandb.init(project="train", dir=str(offline), settings=wandb.Settings(console="off"))
    sink = WandbSink(run="current")
    train.log({"Train/Loss": 1.0}, step=100)
    sink.log_evaluation(_event(50, 40.0, is_best=True))  # merged into the training's open row (step 100)
    sink.log_evaluation(_event(60, 35.0, is_best=True))  # that row already holds one: waits
    train.log({"Train/LR": 0.1}, step=100)  # the training logs the same step again: must not be refused
    train.log({"Train/Loss": 0.9}, step=101)
    sink.log_evaluation(_event(70, 30.0, is_best=True))  # 60 goes into row 101, 70 waits
    sink.log_best(70, "/ckpt/0000070.pt", {"fid": 30.0})
    train.log({"Train/Loss": 0.8}, step=102)
    sink.finish({"best_step": 70}, None)  # training stopped logging: 70 is written now
    sink.close()
    assert wandb.run is train  # the sink never finishes (or replaces) the training's run
    train.finish()

    run = _only_run(offline)
    by_step = {r["_step"]: r for r in run.history}
    assert by_step[100]["Train/Loss"] == 1.0 and by_step[100]["Train/LR"] == 0.1  # nothing refused
    assert by_step[101]["Train/Loss"] == 0.9 and by_step[102]["Train/Loss"] == 0.8
    rows = _eval_rows(run)
    assert sorted(rows) == [50, 60, 70]  # none overwritten, none lost
    assert [rows[s]["Evaluation/FID"] for s in (50, 60, 70)] == [40.0, 35.0, 30.0]
    assert rows[50]["_step"] == 100 and rows[60]["_step"] == 101  # W&B's own step is the training's
    assert run.summary[BEST_KEY]["step"] == 70 and run.summary["bestckpt"] == {"best_step": 70}


def test_best_checkpoint_uploaded_as_model_artifact_only_when_asked(offline: Path) -> None:
    first, second = offline / "0000010.pt", offline / "checkpoint-20"
    first.write_bytes(b"weights-10")
    second.mkdir()
    (second / "model.safetensors").write_bytes(b"weights-20")
    sink = WandbSink(project="p", log_checkpoints=True)
    sink.log_evaluation(_event(10, 40.0, is_best=True))
    sink.log_best(10, str(first), {"fid": 40.0})
    sink.log_best(20, str(second), {"fid": 30.0})  # a folder checkpoint (Trainer / DeepSpeed style)
    sink.close()

    run = _only_run(offline)
    assert [(a["name"], a["type"]) for a in run.artifacts] == [(f"model-{run.run_id}", "model")] * 2
    # the aliases requested for each version; moving `best` between versions happens on the W&B server
    assert {"best", "step-10"} <= set(run.artifacts[0]["aliases"])
    assert {"best", "step-20"} <= set(run.artifacts[1]["aliases"])
    assert run.artifacts[0]["metadata"] == {"step": 10, "path": str(first), "scores": {"fid": 40.0}}
    assert run.artifacts[0]["entries"] == ["0000010.pt"]
    assert run.artifacts[1]["entries"] == ["checkpoint-20/model.safetensors"]
    assert run.summary[BEST_KEY]["step"] == 20


def test_a_misconfigured_wandb_never_stops_evaluation_one_warning_then_off(
        offline: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # online mode without an API key (HOME is empty): wandb.init refuses; the server is never contacted
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    (sink,) = make_sinks({"wandb": {"project": "p"}}, max_failures=3, retries=1)
    caplog.set_level(logging.WARNING, logger="bestckpt.sinks.base")
    for step in (10, 20, 30, 40):
        assert sink.log_evaluation(_event(step, 40.0, is_best=False)) is False  # never raises
    assert sink.finish({}, None) is False
    sink.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # the cause once, then "off"
    assert "No API key" in warnings[0].getMessage() or "api_key" in warnings[0].getMessage().lower()
    assert "off for the rest" in warnings[1].getMessage()
    assert "earlier" in str(sink.last_error)  # wandb.init was tried once, later calls failed at once


def test_nothing_of_wandb_is_imported_unless_chosen() -> None:
    code = ("import sys, bestckpt, bestckpt.sinks.base, bestckpt.sinks.tensorboard, bestckpt.integrations.loop\n"
            "from bestckpt.sinks.base import make_sinks\n"
            "make_sinks(['tensorboard'], context={'experiment_dir': sys.argv[1]})\n"
            "assert 'wandb' not in sys.modules, 'wandb imported'\n"
            "import bestckpt.sinks.wandb\n"
            "assert 'wandb' not in sys.modules, 'the sink module imports wandb only when a sink is built'\n")
    subprocess.run([sys.executable, "-c", code, "/nonexistent"], check=True, timeout=120)


def test_the_training_run_is_refused_where_there_is_none(offline: Path) -> None:
    """A background worker or a sidecar has no training run: run="current" says so (and what to use instead)."""
    sink = WandbSink(run="current")
    with pytest.raises(ValueError, match="mode='inline'.*linked_settings"):
        sink.log_evaluation(_event(10, 40.0, is_best=True))
    with pytest.raises(RuntimeError, match="could not be started earlier"):  # fails at once from now on
        sink.log_best(10, "/ckpt/0000010.pt", {"fid": 40.0})
    sink.close()
    with pytest.raises(ValueError, match="not both"):
        WandbSink(run="current", run_id="abc")
