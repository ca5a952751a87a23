"""Every way a run ends finishes the sinks (real MLflow on SQLite, real offline W&B; no network, no timing).

Training stopped without waiting (``close(wait=False)``: Ctrl-C, a crash) or a ``close(wait=True, timeout=...)``
that ran out, while the background worker is held in the middle of an evaluation (a gate the test keeps
closed): the worker abandons that evaluation, which stays ``pending`` (never failed, never a made-up score),
and finishes its sinks before exiting (exit code 0: it was not killed). MLflow's own run ends ``KILLED`` with
the pending steps tagged and the summary uploaded; a later evaluation (the sidecar) continues the same run and
ends it ``FINISHED``. W&B's own run gets its exit record (exit code 1) and the summary naming the pending steps.
Inline: a Ctrl-C in the middle of an evaluation, then ``close(wait=False)``, ends MLflow's run the same way.
Training that ends without ``close()`` (returns, or is killed) still ends the run (a training subprocess).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import TESTS_DIR, KitScorer, TinySampler, make_protocol, save_checkpoint
from waiting import Beacon, Gate, LineWaiter, wait_for_state

from bestckpt.evaluation.protocol import Protocol
from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule
from bestckpt.runners.evaluator import Evaluator
from bestckpt.runners.sidecar import SidecarWatcher
from bestckpt.sinks.tensorboard import TAGS
from bestckpt.tracking.tracker import BestCheckpointTracker

SAMPLER, SCORER = "pipeline_kit:make_sampler", "pipeline_kit:make_kit_scorer"
PENDING_TAG = "bestckpt.pending_steps"


def _statuses(evaluation: TrainingEvaluation) -> dict[int, str]:
    return {r.step: r.status for r in evaluation.tracker.records}


def _held_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sinks: dict[str, Any]
                     ) -> tuple[TrainingEvaluation, Gate, Beacon, Protocol]:
    """Steps 100 (evaluated), 200 (its evaluation held at the gate, in flight) and 300 (queued behind it)."""
    beacon, gate = Beacon(tmp_path / "sampling"), Gate(tmp_path / "gate")
    monkeypatch.setenv("PIPELINE_KIT_BEACON", str(beacon.path))  # the sampler says which checkpoint it starts
    monkeypatch.setenv("PIPELINE_KIT_GATE", str(gate.path))
    monkeypatch.setenv("PIPELINE_KIT_HOLD", "0000200.pt")  # ... and waits at the gate on step 200
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    protocol = make_protocol(tmp_path)
    evaluation = TrainingEvaluation(ckpt_dir, protocol, SAMPLER, mode="background",
                                    scorer_spec=SCORER, batch_size=4, schedule=EvalSchedule(every_n_checkpoints=1),
                                    log_file=tmp_path / "worker.log", sinks=sinks)
    for step in (100, 200, 300):
        evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    while not beacon.wait_line().endswith(" 0000200.pt"):  # one line per sampler call (batches of step 100)
        pass
    # step 100 is recorded (the worker records a result before it takes the next job); it is inside step 200
    assert _statuses(evaluation)[100] == "evaluated"
    return evaluation, gate, beacon, protocol


def _stop(evaluation: TrainingEvaluation, gate: Gate, beacon: Beacon, how: str) -> None:
    """Close the way training does on Ctrl-C (``wait=False``) or with a timeout that runs out; the gate stays
    closed throughout, so the evaluation of step 200 can only end by being abandoned."""
    try:
        if how == "wait=False":
            evaluation.close(wait=False)
        else:
            evaluation.runner.close(wait=True, timeout=1.0)  # runs out: the gate holds step 200 for good
            evaluation.close(wait=True)  # the runner is closed: only the summary and the results file remain
    finally:
        gate.open()
        beacon.close()
    assert evaluation.runner._proc.exitcode == 0  # the worker exited on its own, after finishing its sinks
    assert _statuses(evaluation) == {100: "evaluated", 200: "pending", 300: "pending"}  # nothing faked or failed


# ---------------------------------------------------------------------------------------------------- MLflow
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    mlflow = pytest.importorskip("mlflow.tracking")
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return {"uri": uri, "root": root, "client": mlflow.MlflowClient(tracking_uri=uri)}


def _experiment(store: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    client = store["client"]
    exp = client.create_experiment(name, artifact_location=str(store["root"] / name))
    return exp, {"mlflow": {"tracking_uri": store["uri"], "experiment_name": name}}


def _summary(client: Any, run_id: str) -> dict[str, Any]:
    return json.loads(Path(client.download_artifacts(run_id, "bestckpt/summary.json")).read_text())


def _steps(client: Any, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, TAGS["composite_score"])}


@pytest.mark.parametrize("how", ["wait=False", "timeout"])
def test_background_stopped_mid_evaluation_ends_the_mlflow_run_killed_and_a_later_evaluation_finishes_it(
        tmp_path: Path, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    client = store["client"]
    exp, sinks = _experiment(store, f"stopped-{how}")
    evaluation, gate, beacon, protocol = _held_background(tmp_path, monkeypatch, sinks)
    _stop(evaluation, gate, beacon, how)

    (run,) = client.search_runs([exp])
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert run.data.tags[PENDING_TAG] == "200,300"
    assert _summary(client, run_id)["pending"] == [200, 300]
    assert _steps(client, run_id) == {100}  # only the real score

    # later: `bestckpt watch`/`evaluate` (here the sidecar in this process) evaluates the pending steps
    monkeypatch.delenv("PIPELINE_KIT_BEACON")
    evaluator = Evaluator(protocol, TinySampler(), scorer=KitScorer(), dist=None, batch_size=4, sinks=sinks)
    SidecarWatcher(evaluation.tracker, evaluator, adopt_after=None).run(once=True)
    assert _statuses(evaluation) == {100: "evaluated", 200: "evaluated", 300: "evaluated"}
    (again,) = client.search_runs([exp])  # the same run, found again by its checkpoint directory
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert PENDING_TAG not in again.data.tags
    assert _summary(client, run_id)["pending"] == []
    assert _steps(client, run_id) == {100, 200, 300}


def test_inline_interrupted_mid_evaluation_ends_the_mlflow_run_killed(tmp_path: Path,
                                                                     store: dict[str, Any]) -> None:
    class CtrlC(TinySampler):
        def __call__(self, checkpoint_path, prompts, seeds, settings, device):  # type: ignore[no-untyped-def]
            if Path(checkpoint_path).name == "0000200.pt":
                raise KeyboardInterrupt  # the user pressed Ctrl-C while step 200 was being sampled
            return super().__call__(checkpoint_path, prompts, seeds, settings, device)

    client = store["client"]
    exp, sinks = _experiment(store, "inline-ctrl-c")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    evaluation = TrainingEvaluation(ckpt_dir, make_protocol(tmp_path), CtrlC(), mode="inline", batch_size=4,
                                    schedule=EvalSchedule(every_n_checkpoints=1), sinks=sinks)
    evaluation.runner.evaluator.scorer = KitScorer()
    with pytest.raises(KeyboardInterrupt):
        for step in (100, 200):
            evaluation.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
    evaluation.close(wait=False)  # what a training loop's `finally` does
    assert _statuses(evaluation) == {100: "evaluated", 200: "pending"}
    (run,) = client.search_runs([exp])
    assert run.info.status == "KILLED" and run.data.tags[PENDING_TAG] == "200"
    assert _summary(client, run.info.run_id)["pending"] == [200]


# ---------------------------------------------------------------------------------------------------- W&B

def test_background_stopped_mid_evaluation_finishes_the_wandb_run(tmp_path: Path, offline: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb_offline import read_offline_runs

    evaluation, gate, beacon, _ = _held_background(tmp_path, monkeypatch, {"wandb": {"project": "t2i"}})
    _stop(evaluation, gate, beacon, "wait=False")
    (run,) = read_offline_runs(offline)
    assert run.exited and run.exit_code == 1  # finished, and marked as not complete: steps were left pending
    assert run.summary["bestckpt"]["pending"] == [200, 300]
    assert [int(r["Evaluation/step"]) for r in run.rows_with("Evaluation/step")] == [100]
    assert "best_checkpoint_results.json" in run.files


# ------------------------------------------------------------------------- training ends without close()
@pytest.mark.parametrize("how", ["exits", "killed"])
def test_training_gone_without_close_still_ends_the_mlflow_run(tmp_path: Path, store: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """``exits``: training returns without ``close()``; multiprocessing SIGTERMs the daemon worker at exit, which
    stops now and ends the run ``KILLED``. ``killed``: training is SIGKILLed; the orphaned worker scores what is
    queued, notices that training is gone and ends the run ``FINISHED``."""
    client = store["client"]
    exp, _ = _experiment(store, f"gone-{how}")
    beacon, gate = Beacon(tmp_path / "sampling"), Gate(tmp_path / "gate")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PIPELINE_KIT_BEACON=str(beacon.path),
               PIPELINE_KIT_GATE=str(gate.path), PIPELINE_KIT_HOLD="0000200.pt")
    proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "interrupted_trainer.py"), str(tmp_path), store["uri"],
                             f"gone-{how}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = LineWaiter(proc.stdout)  # type: ignore[arg-type]
        lines.wait_for("saved")
        while not beacon.wait_line().endswith(" 0000200.pt"):  # the worker is inside step 200
            pass
        if how == "exits":
            proc.stdin.write("\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            assert proc.wait(timeout=300) == 0  # returned; its exit waited for the worker to finish its sinks
        else:
            proc.kill()
            proc.wait(timeout=300)
    finally:
        gate.open()
        if proc.poll() is None:
            proc.kill()
    want = "KILLED" if how == "exits" else "FINISHED"
    (run,) = wait_for_state(lambda: client.search_runs([exp]), lambda runs: runs and runs[0].info.status == want,
                            what=f"the evaluation run ending {want}")
    tracker = BestCheckpointTracker(tmp_path / "run" / "checkpoints", is_writer=False)
    statuses = {r.step: r.status for r in tracker.records}
    if how == "exits":
        assert statuses == {100: "evaluated", 200: "pending", 300: "pending"}
        assert run.data.tags[PENDING_TAG] == "200,300" and _summary(client, run.info.run_id)["pending"] == [200, 300]
    else:
        assert statuses == {100: "evaluated", 200: "evaluated", 300: "evaluated"}
        assert PENDING_TAG not in run.data.tags and _summary(client, run.info.run_id)["pending"] == []
    beacon.close()
