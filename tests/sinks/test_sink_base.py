"""The sink interface: the sinks= option in all its forms, the failure guard, lazy imports, the images list."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import TESTS_DIR

from bestckpt.sinks.base import EvaluationEvent, GuardedSink, SinkSpec, evaluation_images, make_sinks


def test_spec_forms_agree() -> None:
    settings = {"tracking_uri": "sqlite:///x.db", "run_id": "abc"}
    typed = SinkSpec(("mlflow",), {"mlflow": settings})
    assert SinkSpec.coerce({"mlflow": settings}) == typed
    assert SinkSpec.from_cli(["mlflow"], ["mlflow.tracking_uri=sqlite:///x.db", "mlflow.run_id=abc"]) == typed
    assert SinkSpec.coerce(["TensorBoard", "mlflow"]).names == ("tensorboard", "mlflow")
    assert SinkSpec.coerce("mlflow").names == ("mlflow",)
    assert not SinkSpec.coerce(None)
    assert SinkSpec.from_cli(["tensorboard,mlflow"], ["mlflow.upload_best=true"]).settings(
        "mlflow") == {"upload_best": True}
    assert SinkSpec.from_dict(typed.to_dict()) == typed
    assert typed.with_sink("tensorboard", log_dir="tb").names == ("mlflow", "tensorboard")


def test_spec_errors_name_the_value_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"unknown sink\(s\) \['comet'\]; choose from"):
        SinkSpec.coerce(["comet"])
    with pytest.raises(ValueError, match=r"settings given for sink\(s\) \['wandb'\] that are not chosen"):
        SinkSpec.from_cli(["mlflow"], ["wandb.project=x"])
    with pytest.raises(ValueError, match=r"--sink-option 'mlflow': expected NAME.KEY=VALUE"):
        SinkSpec.from_cli(["mlflow"], ["mlflow"])


class _Flaky:
    def __init__(self, fail: int) -> None:
        self.fail, self.calls, self.logged = fail, 0, []

    def log_evaluation(self, event: EvaluationEvent) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError("service unavailable (429)")
        self.logged.append(event.step)

    def close(self) -> None:
        pass


def test_guard_warns_once_retries_and_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bestckpt.sinks.base")
    recovers = _Flaky(fail=1)
    guarded = GuardedSink("flaky", lambda: recovers, retries=1)
    assert guarded.log_evaluation(EvaluationEvent(step=1)) and recovers.logged == [1]  # the retry succeeded
    dead = _Flaky(fail=10**6)
    guarded = GuardedSink("dead", lambda: dead, max_failures=3, retries=1)
    results = [guarded.log_evaluation(EvaluationEvent(step=s)) for s in range(5)]
    assert results == [False] * 5 and guarded.disabled and dead.calls == 6  # 3 calls x 2 tries, then off
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "sink failed (" in w]) == 1
    assert "ConnectionError: service unavailable (429)" in warnings[0]
    assert any("off for the rest of this run" in w for w in warnings)


def test_a_sink_that_cannot_be_built_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    (sink,) = make_sinks({"tensorboard": {}})  # no log dir at all: a ValueError, caught
    assert sink.log_evaluation(EvaluationEvent(step=1)) is False
    assert "needs a log directory" in str(sink.last_error)
    with pytest.raises(ValueError, match="needs a log directory"):
        make_sinks(["tensorboard"], guarded=False)


def test_evaluation_images_and_replayed_events(tmp_path: Path) -> None:
    import torch

    from bestckpt.evaluation.samples import GRID_NAME, write_evaluation_samples

    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    write_evaluation_samples(tmp_path, 300, images, ["a red square", "two dots"], [images[0], None])
    found = evaluation_images(tmp_path, 300)
    assert [p.name for p, _ in found] == ["eval_comparison_000.jpg", "eval_generated_001.jpg", GRID_NAME]
    assert found[0][1] == "step 300, prompt 0 (reference | generated): a red square"
    assert found[1][1].endswith("(generated): two dots")
    assert evaluation_images(tmp_path, 400) == []


_LIGHT = """
import sys, torch
from pathlib import Path
from pipeline_kit import KitScorer, TinySampler, make_protocol, save_checkpoint
import bestckpt
from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.runners import EvalSchedule
root = Path(sys.argv[1])
(root / "run" / "checkpoints").mkdir(parents=True)
ev = TrainingEvaluation(root / "run" / "checkpoints", make_protocol(root), TinySampler(), mode="inline",
                        sinks=["tensorboard"], schedule=EvalSchedule(every_n_checkpoints=1), batch_size=4)
ev.runner.evaluator.scorer = KitScorer()
ev.checkpoint_saved(100, save_checkpoint(root / "run" / "checkpoints" / "0000100.pt", 100))
ev.close()
assert list((root / "run" / "tensorboard_logs").glob("events.out.tfevents.*")), "no TensorBoard file"
print([m for m in ("mlflow", "wandb") if m in sys.modules])
"""


def test_nothing_of_mlflow_or_wandb_is_imported_unless_chosen(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _LIGHT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_mlflow_sink_logs_intervals_and_a_failure_without_a_score(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from bestckpt.sinks.mlflow import MlflowSink

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sink = MlflowSink(uri, experiment_name="unit", artifact_location=str(tmp_path / "art"),
                      checkpoint_dir=str(tmp_path))
    sink.log_evaluation(EvaluationEvent(step=7, scores={"fid": 12.5, "kid": None}, intervals={"fid": (11.0, 14.0)},
                                        protocol_hash="p1", weights="online", is_best=True))
    sink.log_evaluation(EvaluationEvent(step=9, error="sampler crashed", protocol_hash="p1"))
    again = MlflowSink(uri, experiment_name="unit", checkpoint_dir=str(tmp_path))  # a restarted worker
    assert again.run_id == sink.run_id
    client = MlflowClient(tracking_uri=uri)
    metrics: dict[str, Any] = {k: [(m.step, m.value) for m in client.get_metric_history(sink.run_id, k)]
                               for k in ("Evaluation/FID", "Evaluation/FID_CI_low", "Evaluation/FID_CI_high",
                                         "Evaluation/KID", "Evaluation/IsBest")}
    assert metrics == {"Evaluation/FID": [(7, 12.5)], "Evaluation/FID_CI_low": [(7, 11.0)],
                       "Evaluation/FID_CI_high": [(7, 14.0)], "Evaluation/KID": [], "Evaluation/IsBest": [(7, 1.0)]}
    tags = client.get_run(sink.run_id).data.tags
    assert tags["bestckpt.weights"] == "online" and tags["bestckpt.last_error"] == "step 9: sampler crashed"
    failed = json.loads(Path(client.download_artifacts(sink.run_id, "bestckpt/evaluations/0000009.json")).read_text())
    assert failed["error"] == "sampler crashed" and failed["scores"] == {}
