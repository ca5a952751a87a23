"""The HunyuanDiT-shaped example (examples/hunyuandit/train_deepspeed.py) under real DeepSpeed on CPU, 2 ranks (gloo).

One ZeRO-2 run (EMA, step tags every 4, latest.pt every 6, epoch tags every epoch of 10 steps, final.pt, the
script's optimizer-state deletion) and one ZeRO-3 run (module weights, consolidated by zero_to_fp32 for sampling)
are shared by the tests; every subprocess is bounded by a timeout, so a collective hang fails instead of hanging.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_kit import TESTS_DIR
from torchrun_kit import run_checked

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"),
]

REPO = TESTS_DIR.parent.parent
SCRIPT = REPO / "examples" / "hunyuandit" / "train_deepspeed.py"
TIMEOUT = 400  # seconds per launch: a collective hang fails the test


def _env() -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return run_checked(cmd, _env(), TIMEOUT, cwd=REPO)  # one rerun after torch's rare C++ abort (test_distributed)


def launch(results: Path, *options: str) -> tuple[Path, str]:
    """torchrun 2 ranks of the example; returns (the new experiment directory, rank 0's log)."""
    before = set(results.glob("*-tinydit")) if results.is_dir() else set()
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
                 "--results-dir", str(results), *options])
    (new,) = set(results.glob("*-tinydit")) - before
    return new, proc.stdout + proc.stderr


def records(ckpt_dir: Path) -> dict[int, dict]:
    state = json.loads((ckpt_dir / "best_checkpoints.json").read_text())
    return {r["step"]: r for r in state["checkpoints"]}


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def zero2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    results = tmp_path_factory.mktemp("hydit2")
    timings = results / "timings.json"
    exp, log = launch(results, "--zero-stage", "2", "--use-ema", "--max-training-steps", "24", "--ckpt-every", "4",
                      "--ckpt-latest-every", "6", "--epoch-steps", "10", "--ckpt-every-n-epoch", "1",
                      "--save-top-k", "2", "--keep-every-n-steps", "12", "--timings-out", str(timings))
    return exp, log, timings


@pytest.fixture(scope="module")
def zero3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp, _ = launch(tmp_path_factory.mktemp("hydit3"), "--zero-stage", "3", "--save-optimizer-state",
                    "--max-training-steps", "8", "--ckpt-every", "4", "--ckpt-latest-every", "100",
                    "--epoch-steps", "100")
    return exp


def test_zero2_best_retention_and_hunyuandit_tags(zero2: tuple[Path, str, Path]) -> None:
    from bestckpt.demo.tag_sampler import load_tag_model

    exp, log, timings = zero2
    ckpt = exp / "checkpoints"
    recs = records(ckpt)
    # step tags with their steps; e0000.pt (end of epoch 0, step 10) with its training step; e0001.pt (step 20)
    # holds the weights of 0000020.pt, which was registered first: left unregistered
    assert sorted(recs) == [4, 8, 10, 12, 16, 20, 24]
    assert recs[10]["checkpoint_path"] == "e0000.pt" and recs[10]["epoch"] == 0
    assert all(r["status"] == "evaluated" and r["info"]["weights"] == "ema" for r in recs.values()), recs
    score = {s: r["metrics"]["composite_score"] for s, r in recs.items()}
    best = max(sorted(score), key=lambda s: score[s])  # ties: the earlier step
    assert os.path.realpath(ckpt / "best.pt") == os.path.realpath(ckpt / recs[best]["checkpoint_path"])
    top2 = sorted(score, key=lambda s: (-score[s], s))[:2]
    kept = set(top2) | {24} | {12, 24}  # top-k, the newest save (resume point), every 12 steps
    for step, rec in recs.items():
        exists = (ckpt / rec["checkpoint_path"]).is_dir()
        assert exists == (step in kept) and bool(rec.get("pruned")) == (step not in kept), (step, rec, kept)
    # HunyuanDiT's other names are never registered nor touched
    registered = {r["checkpoint_path"] for r in recs.values()}
    for name in ("latest.pt", "final.pt", "e0001.pt", "latest", "zero_to_fp32.py"):
        assert (ckpt / name).exists() and name not in registered, name
    assert (ckpt / "latest").read_text().strip() == "final.pt"
    assert records_mention_nothing_but_tags(ckpt)
    # the script deleted every optimizer-state shard itself; the weights are intact and the state never
    # recorded those files (its deletions are whole registered tags)
    assert not list(ckpt.glob("*/zero_*_optim_states.pt"))
    for step in kept:
        model, weights, meta = load_tag_model(ckpt / recs[step]["checkpoint_path"])  # strict load_state_dict
        assert weights == "ema" and meta["step"] == step and model.num_parameters() > 0
    # the guide's lines in rank 0's output, and the timings for the bench
    assert "🏆 New best checkpoint!" in log and "=== Best Checkpoint Summary ===" in log
    assert list((exp / "tensorboard_logs").glob("events.out.tfevents.*"))
    assert (exp / "evaluation_samples" / f"{best:07d}" / "eval_generated_000.jpg").is_file()
    assert (exp / "logs" / "evaluation_worker.log").is_file()
    out = json.loads(timings.read_text())
    assert out["stack"] == "hunyuandit" and len(out["blocked_s"]) == 7


def records_mention_nothing_but_tags(ckpt: Path) -> bool:
    """Every path the state records (checkpoints, deletion intents) is a whole registered tag, never a file inside one."""
    state = json.loads((ckpt / "best_checkpoints.json").read_text())
    pruned = {r["checkpoint_path"] for r in state["checkpoints"] if r.get("pruned")}
    intents = {i["path"] for i in state.get("deleting") or []}
    paths = [r["checkpoint_path"] for r in state["checkpoints"]] + sorted(intents)
    return intents <= pruned and all("/" not in p and "optim" not in p for p in paths)


def test_zero3_weights_are_consolidated_for_sampling(zero3: Path, tmp_path: Path) -> None:
    from bestckpt.demo.tag_sampler import load_tag_model
    from bestckpt.integrations.hunyuandit import consolidate_zero3, is_zero3

    ckpt = zero3 / "checkpoints"
    recs = records(ckpt)
    assert sorted(recs) == [4, 8]
    assert all(r["status"] == "evaluated" and r["info"]["weights"] == "online" for r in recs.values()), recs
    assert is_zero3(ckpt / "0000008.pt")
    model, weights, meta = load_tag_model(ckpt / "0000008.pt")  # strict load of the consolidated fp32 weights
    assert weights == "online" and meta["step"] == 8 and model.num_parameters() > 0
    # without the optimizer-state shards (the stock script deletes them) there is nothing to consolidate
    copy = tmp_path / "0000008.pt"
    shutil.copytree(ckpt / "0000008.pt", copy)
    for shard in copy.glob("zero_*_optim_states.pt"):
        shard.unlink()
    with pytest.raises(FileNotFoundError, match="--save-optimizer-state"):
        consolidate_zero3(copy)


def test_tags_being_written_and_pending_tags_are_never_pruned(zero2: tuple[Path, str, Path], tmp_path: Path) -> None:
    from bestckpt.tracking.tracker import BestCheckpointTracker

    ckpt = tmp_path / "checkpoints"
    shutil.copytree(zero2[0] / "checkpoints", ckpt, symlinks=True)
    # a tag DeepSpeed is still writing: newest, no completion marker, `latest` does not name it
    shutil.copytree(ckpt / "0000024.pt", ckpt / "0000028.pt", ignore=shutil.ignore_patterns(".bestckpt-*"))
    tracker = BestCheckpointTracker(ckpt, is_writer=True)
    shutil.copytree(ckpt / "0000024.pt", ckpt / "0000032.pt")
    tracker.checkpoint_saved(32, ckpt / "0000032.pt", epoch=3, evaluate=True)  # queued, not scored yet
    for step in (36, 40):  # better checkpoints arrive: 32 falls out of top-k and is no longer the newest
        shutil.copytree(ckpt / "0000024.pt", ckpt / f"{step:07d}.pt")
        tracker.update_checkpoint(step, 3, ckpt / f"{step:07d}.pt", {"composite_score": 10.0 + step})
    tracker.prune()
    assert (ckpt / "0000028.pt").is_dir() and (ckpt / "0000032.pt").is_dir()
    assert records(ckpt)[32]["status"] == "pending"


def test_same_scores_with_one_and_two_processes(zero2: tuple[Path, str, Path], tmp_path: Path) -> None:
    exp = zero2[0]
    recs = records(exp / "checkpoints")
    kept = [s for s, r in recs.items() if not r.get("pruned") and r["checkpoint_path"] == f"{s:07d}.pt"]
    step = max(sorted(kept), key=lambda s: recs[s]["metrics"]["composite_score"])
    tag = exp / "checkpoints" / recs[step]["checkpoint_path"]
    worker = str(TESTS_DIR / "hydit_eval_worker.py")
    args = [str(exp / "protocol" / "protocol.json"), str(tag), str(step)]
    _run([sys.executable, worker, *args, str(tmp_path / "one.json")])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, *args,
          str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["world_size"] == 1 and two["world_size"] == 2 and one["error"] is two["error"] is None
    assert one["weights"] == two["weights"] == "ema"
    assert set(one["scores"]) == set(two["scores"])
    for name, value in one["scores"].items():
        assert two["scores"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        # and the same as the background worker scored it during training
        assert recs[step]["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # `bestckpt evaluate` (one process) on a copy of the run re-scores the tag the same way
    copy = tmp_path / "checkpoints"
    shutil.copytree(exp / "checkpoints", copy, symlinks=True)
    _run([sys.executable, "-m", "bestckpt", "evaluate", str(copy), "--protocol", args[0], "--sampler",
          "bestckpt.demo.tag_sampler:make_sampler", "--steps", str(step), "--force", "--device", "cpu"])
    rescored = records(copy)[step]["metrics"]
    for name, value in one["scores"].items():
        assert rescored[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_relaunch_resumes_from_a_kept_tag_in_a_new_directory(zero2: tuple[Path, str, Path]) -> None:
    from bestckpt.integrations.hunyuandit import read_client_state

    first = zero2[0]
    snapshot = tree(first)
    resume = first / "checkpoints" / "0000024.pt" / "mp_rank_00_model_states.pt"  # the kept resume point
    second, _ = launch(first.parent, "--zero-stage", "2", "--use-ema", "--resume", "--resume-module-root", str(resume),
                       "--max-training-steps", "32", "--ckpt-every", "4", "--ckpt-latest-every", "100",
                       "--epoch-steps", "10", "--ckpt-every-n-epoch", "0", "--save-top-k", "2")
    assert second.name.startswith("002-")  # HunyuanDiT's per-launch experiment directory
    assert sorted(records(second / "checkpoints")) == [28, 32]  # a new ranking, continuing the steps
    assert read_client_state(second / "checkpoints" / "0000032.pt")["steps"] == 32
    assert tree(first) == snapshot  # the previous launch's directory is not touched


def test_sinks_option_through_start_tags_saved_and_close(tmp_path: Path, mlflow_store: dict) -> None:
    """One rank, real DeepSpeed saves of HunyuanDiT's step tags: ``sinks=`` given to ``start`` reaches MLflow
    (inline evaluation on rank 0 logs into the training run: scores at the tags' steps, the best pointer, and the
    summary at ``close``)."""
    from mlflow_kit import check_run, training_run
    from pipeline_kit import make_protocol

    from bestckpt.tracking.tracker import BestCheckpointTracker

    client, run_id = mlflow_store["client"], training_run(mlflow_store, "hunyuandit")
    protocol = make_protocol(tmp_path)
    protocol.to_file(tmp_path / "protocol.json")
    (tmp_path / "sinks.json").write_text(json.dumps({"mlflow": {"tracking_uri": mlflow_store["uri"], "run_id": run_id}}))
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
          str(TESTS_DIR / "hydit_sink_worker.py"), str(tmp_path)])
    tracker = BestCheckpointTracker.open(tmp_path / "checkpoints")
    assert sorted(r.step for r in tracker.records if r.status == "evaluated") == [2, 4, 6]
    assert {r.path for r in tracker.records} == {"0000002.pt", "0000004.pt", "0000006.pt"}
    check_run(client, run_id, tracker, protocol, weights="ema")
