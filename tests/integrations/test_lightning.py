"""BestCheckpointCallback with the real lightning.Trainer in this process (CPU, tiny module).

Inline evaluation (pipeline_kit's scorer) for best.pt and ckpt_path="best"; track-only mode for the
refusals, the resume pin and AsyncCheckpointIO. The example script, its background worker and 2-process DDP:
test_lightning_example.py.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning_kit import GatedIO, TinyLit, loader, make_sampler
from pipeline_kit import make_protocol

from bestckpt.errors import ConfigError
from bestckpt.integrations.lightning import BestCheckpointCallback
from bestckpt.runners import EvalSchedule
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*(val_dataloader|LeafSpec|is not empty|resumable).*")]


def _trainer(ckpt_dir: Path, callbacks: list[Any], steps: int, every: int = 5, **kwargs: Any) -> L.Trainer:
    mc = kwargs.pop("mc", None) or ModelCheckpoint(dirpath=ckpt_dir, filename="{step:07d}", save_top_k=-1,
                                                   every_n_train_steps=every)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=kwargs.pop("logger", False),
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[mc, *callbacks], limit_val_batches=2,
                     num_sanity_val_steps=0, default_root_dir=ckpt_dir.parent, **kwargs)


class _Removals(Callback):
    """Records every file Lightning's ModelCheckpoint asks the strategy to delete."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        original = trainer.strategy.remove_checkpoint
        trainer.strategy.remove_checkpoint = lambda path: (self.removed.append(str(path)), original(path))[1]


def _steps_on_disk(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name[5:12]) for p in ckpt_dir.glob("step=*.ckpt"))


def test_best_pt_is_the_best_scored_and_ckpt_path_best_loads_it(tmp_path: Path, caplog: Any) -> None:
    ckpt_dir = tmp_path / "run" / "checkpoints"
    removals = _Removals()
    best = BestCheckpointCallback(make_protocol(tmp_path, num_samples=4), make_sampler(), mode="inline",
                                  scorer_spec="pipeline_kit:make_kit_scorer", schedule=EvalSchedule(1),
                                  save_top_k=2, keep_every_n_steps=20, tensorboard_dir=tmp_path / "run" / "tb")
    trainer = _trainer(ckpt_dir, [removals, best], steps=30)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyLit(), loader())
    tracker = BestCheckpointTracker.open(ckpt_dir)
    scored = {r.step: r.score("composite_score") for r in tracker.records if r.status == "evaluated"}
    assert sorted(scored) == [5, 10, 15, 20, 25, 30]
    best_step = max(scored, key=lambda s: (scored[s], -s))
    assert (ckpt_dir / "best.pt").resolve() == (ckpt_dir / f"step={best_step:07d}.ckpt").resolve()
    top2 = sorted(scored, key=lambda s: (-scored[s], s))[:2]
    assert _steps_on_disk(ckpt_dir) == sorted({*top2, 20, 30})  # top-k, every-N (20), latest (30)
    assert removals.removed == []  # Lightning deleted nothing
    pruned = {r.step for r in tracker.records if r.pruned}
    assert pruned == {5, 10, 15, 20, 25, 30} - {*top2, 20, 30}
    assert trainer.checkpoint_callback.best_model_path == str(ckpt_dir / f"step={best_step:07d}.ckpt")
    assert "=== Best Checkpoint Summary ===" in caplog.text and "🏆 New best checkpoint!" in caplog.text
    assert (ckpt_dir / "best_checkpoint_results.json").is_file() and list((tmp_path / "run" / "tb").iterdir())
    # Lightning's "best" is bestckpt's best, which is never deleted: validate loads it
    trainer.validate(TinyLit(), loader(4), ckpt_path="best")
    assert Path(trainer.ckpt_path) == ckpt_dir / f"step={best_step:07d}.ckpt"


@pytest.mark.parametrize("mc_kwargs, match", [
    (dict(save_top_k=1), "save_top_k=1"),
    (dict(save_top_k=-1, monitor="val_loss"), "monitor='val_loss'"),
    (dict(save_top_k=-1, filename=None), "epoch=0-step=1234.ckpt"),
])
def test_a_conflicting_model_checkpoint_is_refused_before_training(tmp_path: Path, mc_kwargs: dict[str, Any],
                                                                   match: str) -> None:
    kwargs = dict(dict(dirpath=tmp_path / "ckpt", filename="{step:07d}", every_n_train_steps=5), **mc_kwargs)
    module = TinyLit()
    trainer = _trainer(tmp_path / "ckpt", [BestCheckpointCallback(None, None, mode="off")], steps=10,
                       mc=ModelCheckpoint(**kwargs))
    with pytest.raises(ConfigError, match=match):
        trainer.fit(module, loader())
    assert module.global_step == 0 and not list((tmp_path / "ckpt").glob("*.ckpt"))


def test_no_model_checkpoint_is_refused(tmp_path: Path) -> None:
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        callbacks=[BestCheckpointCallback(None, None, mode="off")], enable_progress_bar=False)
    with pytest.raises(ConfigError, match="exactly one ModelCheckpoint"):
        trainer.fit(TinyLit(), loader())


def test_resume_checkpoint_is_pinned_and_lightning_resumes_from_what_is_kept(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    track = dict(mode="off", save_top_k=1, keep_every_n_steps=0)
    _trainer(ckpt_dir, [BestCheckpointCallback(None, None, **track)], steps=15).fit(TinyLit(), loader())
    assert _steps_on_disk(ckpt_dir) == [15]  # nothing scored: only the latest is kept
    removals, cb = _Removals(), BestCheckpointCallback(None, None, **track)
    trainer = _trainer(ckpt_dir, [removals, cb], steps=30)
    trainer.fit(TinyLit(), loader(), ckpt_path=str(ckpt_dir / "step=0000015.ckpt"))
    assert trainer.global_step == 30 and cb.pinned_resume == 15
    assert _steps_on_disk(ckpt_dir) == [15, 30]  # the resume point survives three later saves
    tracker = BestCheckpointTracker.open(ckpt_dir)
    assert tracker.config.pinned_steps == (15,)
    assert {r.step for r in tracker.records if r.pruned} == {5, 10, 20, 25} and removals.removed == []
    # resume again, from the newest (Lightning's ckpt_path="last" needs save_last; a path works)
    again = _trainer(ckpt_dir, [BestCheckpointCallback(None, None, **track)], steps=35)
    again.fit(TinyLit(), loader(), ckpt_path=str(ckpt_dir / "step=0000030.ckpt"))
    assert again.global_step == 35 and _steps_on_disk(ckpt_dir) == [15, 30, 35]
    assert BestCheckpointTracker.open(ckpt_dir).config.pinned_steps == (15, 30)


class _OpenGateLater(Callback):
    """At the step after the held save, checks it is not registered yet, then lets the write happen."""

    def __init__(self, io: GatedIO, cb: BestCheckpointCallback) -> None:
        self.io, self.cb, self.checked = io, cb, False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == 7:
            assert self.cb.evaluation is not None
            assert 5 not in {r.step for r in self.cb.evaluation.tracker.records}
            self.checked = True
            self.io.gate.set()


def test_async_checkpoint_io_registers_only_written_files(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    io = GatedIO(hold="step=0000005.ckpt")
    cb = BestCheckpointCallback(None, None, mode="off", save_top_k=1, keep_every_n_steps=0)
    gate = _OpenGateLater(io, cb)
    trainer = _trainer(ckpt_dir, [gate, cb], steps=20, plugins=[AsyncCheckpointIO(io)])
    trainer.fit(TinyLit(), loader())
    assert gate.checked
    tracker = BestCheckpointTracker.open(ckpt_dir)
    assert [r.step for r in sorted(tracker.records, key=lambda r: r.seq)] == [5, 10, 15, 20]
    assert _steps_on_disk(ckpt_dir) == [20] and len(cb.blocked_s) == 4


def test_checkpoint_directories_are_marked_registered_and_pruned_whole(tmp_path: Path) -> None:
    """The DeepSpeed strategy's checkpoint is a directory; the strategy needs a GPU (not run here), so a
    CheckpointIO writing its layout stands in for the write. The callback's directory path runs for real."""
    from lightning_kit import DirectoryIO

    from bestckpt.integrations.lightning import load_lightning_state_dict
    from bestckpt.tracking.layout import COMPLETE_MARKER

    ckpt_dir = tmp_path / "checkpoints"
    cb = BestCheckpointCallback(make_protocol(tmp_path, num_samples=4), make_sampler(), mode="inline",
                                scorer_spec="pipeline_kit:make_kit_scorer", schedule=EvalSchedule(1),
                                save_top_k=1, keep_every_n_steps=0)
    _trainer(ckpt_dir, [cb], steps=15, plugins=[DirectoryIO()]).fit(TinyLit(), loader())
    tracker = BestCheckpointTracker.open(ckpt_dir)
    scored = {r.step: r.score("composite_score") for r in tracker.records if r.status == "evaluated"}
    best = max(scored, key=lambda s: (scored[s], -s))
    assert (ckpt_dir / "best.pt").resolve() == (ckpt_dir / f"step={best:07d}.ckpt").resolve()
    kept = {p.name for p in ckpt_dir.glob("step=*.ckpt")}
    assert kept == {f"step={s:07d}.ckpt" for s in {best, 15}}
    for name in kept:
        assert (ckpt_dir / name).is_dir() and (ckpt_dir / name / COMPLETE_MARKER).is_file()
    state, ckpt = load_lightning_state_dict(ckpt_dir / "step=0000015.ckpt")
    assert set(state) == {"w"} and ckpt["global_step"] == 15


def test_lightning_default_names_work_with_an_epoch_template(tmp_path: Path) -> None:
    """ModelCheckpoint's default ``epoch=X-step=Y.ckpt`` names, kept by bestckpt with the matching template."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    best = BestCheckpointCallback(None, None, mode="off", filename_template="epoch={epoch}-step={step}.ckpt",
                                  save_top_k=1, keep_every_n_steps=None)
    mc = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_train_steps=5)  # Lightning's default filename
    trainer = _trainer(ckpt_dir, [best], steps=15, mc=mc)
    trainer.fit(TinyLit(), loader())
    tracker = BestCheckpointTracker.open(ckpt_dir)
    assert sorted(r.step for r in tracker.records) == [5, 10, 15]
    assert [r.path for r in tracker.records if r.step == 15] == ["epoch=0-step=15.ckpt"]
    # mode="off" scores nothing: only the newest save (the resume point) must stay
    assert (ckpt_dir / "epoch=0-step=15.ckpt").is_file()


def test_sinks_option_logs_every_evaluation_into_the_training_run(tmp_path: Path,
                                                                  mlflow_store: dict[str, Any]) -> None:
    """``sinks=`` passes through the callback to TrainingEvaluation: MLflow gets the scores at the checkpoints'
    steps, the best pointer and, at the end, the summary (read back through MlflowClient)."""
    from mlflow_kit import check_run, training_run

    client, run_id = mlflow_store["client"], training_run(mlflow_store, "lightning")
    protocol = make_protocol(tmp_path, num_samples=4)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    cb = BestCheckpointCallback(protocol, make_sampler(), mode="inline", scorer_spec="pipeline_kit:make_kit_scorer",
                                schedule=EvalSchedule(1), save_top_k=1, keep_every_n_steps=0,
                                sinks={"mlflow": {"tracking_uri": mlflow_store["uri"], "run_id": run_id}})
    _trainer(ckpt_dir, [cb], steps=15).fit(TinyLit(), loader())
    tracker = BestCheckpointTracker.open(ckpt_dir)
    assert sorted(r.step for r in tracker.records if r.status == "evaluated") == [5, 10, 15]
    check_run(client, run_id, tracker, protocol, weights="online")
    assert client.get_run(run_id).info.status == "RUNNING"  # the training run is never ended by bestckpt


def test_wandb_sink_shares_the_wandb_logger_run(tmp_path: Path, offline: Path) -> None:
    """Lightning's own ``WandbLogger`` (offline) and ``sinks={"wandb": {"run": "current"}}`` inline: the evaluations
    go into the logger's run against ``Evaluation/step``, Lightning's rows are all kept, the run is not finished by
    bestckpt (read back from the offline run file with wandb's own protobuf records)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from wandb_offline import read_offline_runs

    from bestckpt.sinks.tensorboard import TAGS
    from bestckpt.sinks.wandb import BEST_KEY, STEP_METRIC

    protocol = make_protocol(tmp_path, num_samples=4)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    logger = WandbLogger(project="t2i", save_dir=str(offline), offline=True)
    cb = BestCheckpointCallback(protocol, make_sampler(), mode="inline", scorer_spec="pipeline_kit:make_kit_scorer",
                                schedule=EvalSchedule(1), save_top_k=1, keep_every_n_steps=0,
                                sinks={"wandb": {"run": "current"}})
    class LoggingLit(TinyLit):  # the training's own logging through the logger, every step
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    try:
        _trainer(ckpt_dir, [cb], steps=15, logger=logger, log_every_n_steps=1).fit(LoggingLit(), loader())
        assert wandb.run is logger.experiment  # still the logger's run: bestckpt never finishes or replaces it
    finally:
        wandb.finish()
    tracker = BestCheckpointTracker.open(ckpt_dir)
    evaluated = {r.step: r for r in tracker.records if r.status == "evaluated"}
    assert sorted(evaluated) == [5, 10, 15]
    (run,) = read_offline_runs(offline)
    rows = {int(r[STEP_METRIC]): r for r in run.rows_with(STEP_METRIC)}
    assert set(rows) == set(evaluated)
    for step, record in evaluated.items():
        for name, value in record.metrics.items():
            assert rows[step][TAGS.get(name, f"Evaluation/{name}")] == pytest.approx(value), (step, name)
    assert {int(r["trainer/global_step"]) for r in run.rows_with("train_loss")} >= set(range(15))  # none refused
    assert tracker.best is not None and run.summary[BEST_KEY]["step"] == tracker.best.step
    assert run.summary["bestckpt"]["best_step"] == tracker.best.step
