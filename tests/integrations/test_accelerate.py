"""diffusers / accelerate: the example script under a real ``accelerate launch`` with 2 CPU processes (gloo).

One run trains 8 steps (a checkpoint every 2, every one evaluated in the background on the main
process, top-1 + latest + every 4th step kept), then a second launch resumes with diffusers' own
``--resume_from_checkpoint latest`` (accelerate's ``load_state``) and trains to step 12, saving in
the stock script's form (``save_state`` on the main process only). Every subprocess is bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torchrun_kit import run_checked

pytest.importorskip("accelerate")
pytest.importorskip("diffusers")

from bestckpt.errors import ConfigError  # noqa: E402
from bestckpt.integrations.accelerate import AccelerateCheckpoints, check_total_limits, load_unet  # noqa: E402
from bestckpt.tracking.layout import COMPLETE_MARKER, OWN_NAMES  # noqa: E402
from bestckpt.tracking.tracker import BestCheckpointTracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "diffusers"
SCRIPT = EXAMPLE / "train_text_to_image.py"
LAUNCH_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accelerate_launch(script: Path, *args: str, fresh: Callable[[], None] | None = None
                       ) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` with 2 CPU processes: torchrun's launcher (``--multi_gpu``) with
    ``ACCELERATE_USE_CPU`` so accelerate picks MULTI_CPU/gloo (``--cpu`` alone starts one process).

    ``fresh`` (a launch that starts from a known folder state): put that state back and launch once more after
    torch's rare C++ abort of a gloo process (torchrun_kit); the returned process then succeeded."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script), *args]
    if fresh is not None:
        return run_checked(cmd, env, LAUNCH_TIMEOUT_S, cwd=ROOT, fresh=fresh)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=ROOT)


def _launch(output_dir: Path, *script_args: str, fresh: Callable[[], None] | None = None
            ) -> subprocess.CompletedProcess[str]:
    proc = _accelerate_launch(
        SCRIPT, "--output_dir", str(output_dir), "--use_ema", "--checkpointing_steps", "2", "--save_top_k", "1",
        "--keep_every_n_steps", "4", "--num_eval_prompts", "16", "--eval_sample_steps", "4",
        "--eval_every_n_checkpoints", "1", *script_args, fresh=fresh)
    assert proc.returncode == 0, f"launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def _state(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "best_checkpoints.json").read_text())


def _kept(output_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*")}


def _best_scored(state: dict[str, Any]) -> int:
    scored = [r for r in state["checkpoints"] if r["metrics"].get("composite_score") is not None]
    return max(scored, key=lambda r: (r["metrics"]["composite_score"], -r["step"]))["step"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("accelerate") / "sd-model"

    def user_files() -> None:  # files outside the layout: never touched
        shutil.rmtree(out, ignore_errors=True)
        (out / "logs").mkdir(parents=True)
        (out / "notes.txt").write_text("user file\n")
        (out / "logs" / "keep.txt").write_text("user log\n")

    user_files()
    timings = out.parent / "timings.json"
    first = _launch(out, "--max_train_steps", "8", "--timings-out", str(timings), fresh=user_files)
    after_first = {"state": _state(out), "kept": _kept(out), "timings": json.loads(timings.read_text()),
                   "log": first.stdout + first.stderr}
    second = _launch(out, "--max_train_steps", "12", "--resume_from_checkpoint", "latest", "--save_on_main_only")
    return {"out": out, "first": after_first, "log": second.stdout + second.stderr}


def test_best_and_retention_after_the_first_run(run: dict[str, Any]) -> None:
    first = run["first"]
    state = first["state"]
    assert [r["step"] for r in state["checkpoints"]] == [2, 4, 6, 8]
    assert all(r["status"] == "evaluated" and r["info"]["weights"] == "ema" for r in state["checkpoints"])
    best = _best_scored(state)
    assert state["best_step"] == best
    assert first["kept"] == {best, 4, 8}  # top-1, every 4th step, latest (the resume point)
    assert first["timings"]["stack"] == "diffusers" and len(first["timings"]["blocked_s"]) == 4
    assert "=== Best Checkpoint Summary ===" in first["log"]


def test_resume_from_the_newest_kept_checkpoint(run: dict[str, Any]) -> None:
    out, state = run["out"], _state(run["out"])
    assert "Resuming from checkpoint checkpoint-8" in run["log"]
    assert [r["step"] for r in state["checkpoints"]] == [2, 4, 6, 8, 10, 12]  # the ranking went on
    # load_state ran the load hook: the EMA went on counting from the checkpoint's 8 optimisation steps
    ema_config = json.loads((out / "checkpoint-12" / "unet_ema" / "config.json").read_text())
    assert ema_config["optimization_step"] == 12
    best = _best_scored(state)
    assert state["best_step"] == best
    assert _kept(out) == {best, 4, 8, 12}
    assert os.path.realpath(out / "best.pt") == str((out / f"checkpoint-{best}").resolve())


def test_nothing_outside_the_layout_touched(run: dict[str, Any]) -> None:
    out = run["out"]
    assert (out / "notes.txt").read_text() == "user file\n"
    assert (out / "logs" / "keep.txt").read_text() == "user log\n"
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["keep.txt", "text2image-fine-tune"]
    assert not (out / "checkpoints").exists()  # accelerate's automatic-naming folder: never created
    assert (out / "unet" / "config.json").is_file()  # the script's final save
    names = {p.name for p in out.iterdir()} - {p.name for p in out.glob("checkpoint-*")}
    assert names - OWN_NAMES == {"notes.txt", "logs", "unet", "bestckpt"}
    for step in (4, 8):  # saved by every process: one random_states file each, all kept together
        entries = {p.name for p in (out / f"checkpoint-{step}").iterdir()}
        assert entries == {"optimizer.bin", "random_states_0.pkl", "random_states_1.pkl", "unet", "unet_ema",
                           COMPLETE_MARKER}
    assert "random_states_1.pkl" not in {p.name for p in (out / "checkpoint-12").iterdir()}  # main-only form


def test_load_unet_prefers_ema(run: dict[str, Any], tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from tiny_dit import TinyDiTModel
    finally:
        sys.path.remove(str(EXAMPLE))
    ckpt = run["out"] / "checkpoint-8"
    assert load_unet(ckpt, TinyDiTModel)[1] == "ema"
    assert load_unet(ckpt, TinyDiTModel, prefer_ema=False)[1] == "online"
    copy = tmp_path / "checkpoint-8"
    shutil.copytree(ckpt / "unet", copy / "unet")
    assert load_unet(copy, TinyDiTModel)[1] == "online"
    shutil.rmtree(copy / "unet")
    with pytest.raises(FileNotFoundError, match="register_save_state_pre_hook"):
        load_unet(copy, TinyDiTModel)


def test_total_limits_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    try:
        _refusals(Accelerator, ProjectConfiguration, tmp_path)
    finally:
        AcceleratorState._reset_state(True)  # accelerate's process-wide singleton: leave no state to other tests


def _refusals(accelerator_cls: Any, project_config_cls: Any, tmp_path: Path) -> None:
    accelerator = accelerator_cls(cpu=True)
    with pytest.raises(ConfigError, match="--checkpoints_total_limit=3 .*Drop --checkpoints_total_limit"):
        AccelerateCheckpoints(accelerator, tmp_path / "out", None, None, checkpoints_total_limit=3, mode="off")
    assert not (tmp_path / "out").exists()
    automatic = accelerator_cls(cpu=True, project_config=project_config_cls(
        project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2))
    with pytest.raises(ConfigError, match=r"automatic_checkpoint_naming=True, total_limit=2\)"):
        check_total_limits(automatic)
    with pytest.raises(ConfigError, match="mode='inline'"):
        AccelerateCheckpoints(accelerator, tmp_path / "out", None, None, mode="inline")


def test_a_failed_registration_reaches_every_process(tmp_path: Path) -> None:
    """The main process fails to register (nothing was saved): the other process raises too, no hang."""
    def fresh() -> None:
        for p in tmp_path.glob("out.result-*"):
            p.unlink()

    proc = _accelerate_launch(Path(__file__).parents[1] / "support" / "accelerate_worker.py", str(tmp_path / "out"),
                              fresh=fresh)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = [p.read_text().strip() for p in sorted(tmp_path.glob("out.result-*"))]
    assert len(results) == 2, (results, proc.stdout[-3000:])
    assert results[0].startswith("RESULT 0 FileNotFoundError") and "checkpoint-5" in results[0]
    assert results[1].startswith("RESULT 1 RuntimeError bestckpt: registering checkpoint-5 failed on the main process")


def test_single_process_registers_after_a_real_save_state(tmp_path: Path) -> None:
    """One process (no broadcast): the folder accelerate wrote is marked complete and registered; a step
    that was never saved is a clear error naming the folder."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(2, 2)
        accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))  # what save_state writes
        best = AccelerateCheckpoints(accelerator, tmp_path, mode="off")
        accelerator.save_state(str(tmp_path / "checkpoint-3"))
        best.checkpoint_saved(3)
        assert (tmp_path / "checkpoint-3" / COMPLETE_MARKER).is_file()
        assert [r.step for r in best.tracker.records] == [3] and len(best.blocked_s) == 1
        with pytest.raises(FileNotFoundError, match="checkpoint-4.*is not a directory"):
            best.checkpoint_saved(4)
        best.close()
    finally:
        AcceleratorState._reset_state(True)


def test_sinks_option_reaches_the_background_worker(tmp_path: Path, mlflow_store: dict[str, Any]) -> None:
    """One process, real ``save_state``: ``sinks=`` passes through AccelerateCheckpoints to the background worker
    (inline is refused here), which logs into the training run by its id: scores at the checkpoints' steps, the
    best pointer, the summary at ``close``."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from hf_kit import TinyImageModel
    from mlflow_kit import check_run, training_run
    from pipeline_kit import make_protocol

    client, run_id = mlflow_store["client"], training_run(mlflow_store, "accelerate")
    protocol = make_protocol(tmp_path)
    out = tmp_path / "out"
    try:
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(TinyImageModel())
        best = AccelerateCheckpoints(accelerator, out, protocol, "hf_kit:make_sampler", evaluate_every_n_checkpoints=1,
                                     scorer_spec="pipeline_kit:make_kit_scorer", save_top_k=1,
                                     sinks={"mlflow": {"tracking_uri": mlflow_store["uri"], "run_id": run_id}})
        for step in (2, 4):
            with torch.no_grad():
                model.w.mul_(0.5)  # different weights, different scores
            accelerator.save_state(str(out / f"checkpoint-{step}"))
            best.checkpoint_saved(step)
        best.close()
    finally:
        AcceleratorState._reset_state(True)
    tracker = BestCheckpointTracker.open(out)
    assert sorted(r.step for r in tracker.records if r.status == "evaluated") == [2, 4]
    check_run(client, run_id, tracker, protocol, weights="online")
