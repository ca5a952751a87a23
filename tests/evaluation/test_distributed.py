"""Real multi-process evaluation: `torchrun --nproc_per_node 2` with gloo.

2-process scores equal 1-process scores; evaluating twice gives identical scores; a failure on one
rank is agreed on by all ranks (no hang); an empty shard still takes part; the inline runner records once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pipeline_kit import (
    TESTS_DIR,
    KitScorer,
    TinySampler,
    make_protocol,
    save_checkpoint,
)

from bestckpt.evaluation.evaluate import (
    evaluate_checkpoint,
    prepare_reference_statistics,
)
from bestckpt.evaluation.protocol import Protocol, SmallSampleWarning

pytestmark = pytest.mark.distributed


def run_torchrun(work: Path, backend: str = "gloo", timeout: float = 240) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", BESTCKPT_TEST_BACKEND=backend, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS_DIR / "dist_eval_worker.py"), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and _TORCH_ABORT in proc.stderr:
        # Known, rare under heavy CPU load (about 1 run in 20 with two CPU hogs): a rank aborts inside
        # torch's C++ with no Python exception. One more run tells that apart from a real failure, which
        # fails again (and shows both outputs); the cause is recorded in the session notes.
        first = proc.stderr[-2000:]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, first + "\n--- rerun ---\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((work / "out.json").read_text())


_TORCH_ABORT = "terminate called without an active exception"


def prepare(work: Path) -> Protocol:
    protocol = make_protocol(work, num_samples=7)  # odd: shards of 4 and 3
    protocol.to_file(work / "protocol.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        one = Protocol(prompts=protocol.prompts[:1], num_samples=1, sampler=protocol.sampler,
                       metrics=("inception_score", "composite_score"))
    one.to_file(work / "protocol_one.json")
    (work / "checkpoints").mkdir()
    save_checkpoint(work / "checkpoints" / "0000100.pt", 100)
    return protocol


def single_process(work: Path, name: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        protocol = Protocol.from_file(work / name)
    scorer = KitScorer()
    res = evaluate_checkpoint(work / "checkpoints" / "0000100.pt", 100, protocol, TinySampler(), scorer,
                              prepare_reference_statistics(protocol, scorer), dist=None, batch_size=5)
    assert res.ok, res.error
    return dict(res.scores)


def test_two_process_gloo_equals_one_process(tmp_path: Path) -> None:
    prepare(tmp_path)
    out = run_torchrun(tmp_path)
    assert out["world_size"] == 2 and out["error"] is None
    expected = single_process(tmp_path, "protocol.json")
    assert set(out["scores"]) == set(expected)
    for k, v in expected.items():
        assert out["scores"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert out["again"] == out["scores"]  # same checkpoint twice -> identical
    assert out["weights"] == "ema"
    # the injected failure on rank 1 reached both ranks, naming the rank
    assert out["failed_error_all_ranks"][0] == out["failed_error_all_ranks"][1]
    assert "rank 1" in out["failed_error"] and "out of memory on rank 1" in out["failed_error"]
    # one sample on two ranks: the empty shard took part, same as one process
    assert out["one_sample"]["error"] is None
    one = single_process(tmp_path, "protocol_one.json")
    assert out["one_sample"]["scores"] == pytest.approx(one)
    # inline runner under torchrun: recorded once by rank 0
    assert out["inline"]["error"] is None
    state = json.loads((tmp_path / "checkpoints" / "best_checkpoints.json").read_text())
    assert "0000100" in json.dumps(state)
    assert (tmp_path / "samples_dist" / "0000100" / "eval_generated_003.jpg").is_file()
    assert not (tmp_path / "samples_dist" / "0000100" / "eval_generated_004.jpg").exists()  # 4 prompts


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
                    reason="NCCL evaluation needs 2 CUDA devices")
def test_two_process_nccl_equals_one_process(tmp_path: Path) -> None:
    prepare(tmp_path)
    out = run_torchrun(tmp_path, backend="nccl")
    expected = single_process(tmp_path, "protocol.json")
    for k, v in expected.items():
        assert out["scores"][k] == pytest.approx(v, rel=1e-6), k
    assert "rank 1" in out["failed_error"]
