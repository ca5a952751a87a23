"""`bestckpt evaluate` and `bestckpt finalize` under torchrun (2 ranks, real gloo, CPU): the same scores, the same
best.pt and the same decision as one process, recorded by rank 0 only, and the table printed once.

The scores are compared bit for bit: the ranks' shards are contiguous, so the gathered features are the one-process
features in the same order, the kit's features are per image (a row does not depend on its batch), and rank 0 scores
the whole gathered tensor once, exactly as the one process does (tests/runners/test_finalize.py's distributed case
asserts the same equality).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_kit import make_protocol, save_checkpoint
from torchrun_kit import TESTS_DIR, run_checked

from bestckpt.cli import main
from bestckpt.runners.finalize import DECISION_FILE
from bestckpt.tracking.finalized import final_of
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.distributed

STEPS = (100, 200, 300)


def _checkpoints(ckpt: Path) -> Path:
    ckpt.mkdir(parents=True)
    for step in STEPS:
        save_checkpoint(ckpt / f"{step:07d}.pt", step)
    return ckpt


def _torchrun_cmd(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``torchrun --nproc_per_node 2 -m bestckpt ARGV``; every rank's output lines carry ``[default<rank>]:``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--tee", "3",
            "-m", "bestckpt", *argv], env


def _torchrun(argv: list[str], fresh: object) -> str:
    cmd, env = _torchrun_cmd(argv)
    proc = run_checked(cmd, env, timeout=150, fresh=fresh)  # type: ignore[arg-type]
    assert "[default1]:" not in proc.stdout, proc.stdout  # rank 1 prints nothing (its errors would go to stderr)
    return proc.stdout


def _scores(ckpt: Path) -> dict[int, tuple[str, dict[str, float]]]:
    return {r.step: (r.status, dict(r.metrics)) for r in BestCheckpointTracker.open(ckpt).records}


def _final_scores(ckpt: Path) -> dict[int, dict]:
    """Each record's scores under finalize's protocol(s), without the time they were stored."""
    return {r.step: {phash: {k: v for k, v in entry.items() if k != "time"}
                     for phash, entry in (final_of(r).get("scores") or {}).items()}
            for r in BestCheckpointTracker.open(ckpt).records}


def _decision(ckpt: Path) -> dict:
    decision = json.loads((ckpt / DECISION_FILE).read_text())
    decision.pop("time")
    return decision


def test_evaluate_and_finalize_under_torchrun_match_one_process(tmp_path: Path, one_thread: None) -> None:
    make_protocol(tmp_path, num_samples=8).to_file(tmp_path / "protocol.json")
    one, two = _checkpoints(tmp_path / "one" / "checkpoints"), _checkpoints(tmp_path / "two" / "checkpoints")
    common = ["--protocol", str(tmp_path / "protocol.json"), "--sampler", "pipeline_kit:make_sampler",
              "--scorer", "pipeline_kit:make_kit_scorer", "--device", "cpu"]

    def fresh_two() -> None:  # a rerun after torch's rare C++ abort starts from the same directory
        shutil.rmtree(two)
        _checkpoints(two)

    assert main(["evaluate", str(one), *common]) == 0
    out = _torchrun(["evaluate", str(two), *common], fresh_two)
    assert out.count("Best Checkpoint Summary") == 1 and out.count("3 checkpoint(s) evaluated under protocol") == 1
    scores = _scores(two)
    assert set(scores) == set(STEPS) and all(status == "evaluated" for status, _ in scores.values())
    assert scores == _scores(one)  # bit for bit (module docstring)
    assert (two / "best.pt").readlink() == (one / "best.pt").readlink()

    # finalize: every rank alike, rank 0 records the decision
    shutil.copytree(two.parent, tmp_path / "two_evaluated")

    def fresh_evaluated() -> None:
        shutil.rmtree(two.parent)
        shutil.copytree(tmp_path / "two_evaluated", two.parent)

    assert main(["finalize", str(one), *common, "--samples-factor", "2"]) == 0
    out = _torchrun(["finalize", str(two), *common, "--samples-factor", "2"], fresh_evaluated)
    assert out.count("finalize under protocol") == 1
    assert _decision(two) == _decision(one)
    finals = [_final_scores(d) for d in (one, two)]
    assert finals[0] == finals[1] and any(finals[0].values())
    assert (two / "best.pt").readlink() == (one / "best.pt").readlink()


def test_a_rank_that_stops_stops_them_all_and_nothing_is_recorded_as_failed(tmp_path: Path) -> None:
    """Rank 1 is interrupted in its first sampling: rank 0's next collective fails (or torchrun ends it), so both
    stop; the checkpoint is not recorded as a failed evaluation (the peer's death is not its fault), nothing
    hangs (bounded by the subprocess timeout), and the run is left to evaluate again."""
    make_protocol(tmp_path, num_samples=8).to_file(tmp_path / "protocol.json")
    ckpt = _checkpoints(tmp_path / "checkpoints")
    cmd, env = _torchrun_cmd(["evaluate", str(ckpt), "--protocol", str(tmp_path / "protocol.json"), "--sampler",
                              "dist_cli_kit:make_stops_on_rank1", "--scorer", "pipeline_kit:make_kit_scorer",
                              "--device", "cpu"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "[default1]:bestckpt: interrupted" in proc.stderr, proc.stderr[-3000:]
    records = BestCheckpointTracker.open(ckpt).records
    assert {r.step for r in records} == set(STEPS), proc.stderr[-3000:]
    for r in records:  # registered (pending) or untouched, never failed nor scored
        assert r.status in ("pending", "saved") and not r.metrics and "error" not in r.info, (r, proc.stderr[-3000:])


@pytest.mark.parametrize(("option", "message"), [(["--device", "cuda:1"], "under torchrun pass --device cuda"),
                                                 (["--dist-timeout", "0"], "positive number of seconds"),
                                                 (["--device", "cuda"], "start at most that many ranks per node")])
def test_refused_under_torchrun_before_joining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], option: list[str],
                                               message: str) -> None:
    """One GPU named for every rank, or no timeout: one clear line, before any process group is started."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "4096")  # more GPUs than any machine has
    ckpt = _checkpoints(tmp_path / "checkpoints")
    assert main(["evaluate", str(ckpt), "--protocol", "p.json", "--sampler", "m:f", *option]) == 2
    assert message in capsys.readouterr().err
