"""The same evaluation on CUDA (skipped without it): real Scorer with random-test backbones, inline and
background runners, determinism on the GPU, agreement with the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_kit import TinySampler, make_protocol, real_protocol, save_checkpoint

from bestckpt.evaluation.evaluate import (
    evaluate_checkpoint,
    prepare_reference_statistics,
)
from bestckpt.runners import (
    BackgroundRunner,
    EvalSchedule,
    Evaluator,
    InlineRunner,
    build_scorer,
)
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_real_scorer_on_cuda_matches_cpu_and_is_deterministic(tmp_path: Path) -> None:
    protocol = real_protocol(tmp_path)
    ckpt = save_checkpoint(tmp_path / "0000100.pt", 100)
    results = {}
    for device in ("cpu", "cuda"):
        scorer = build_scorer(protocol, device=device)
        ref = prepare_reference_statistics(protocol, scorer)
        a = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, device=device, dist=None)
        b = evaluate_checkpoint(ckpt, 100, protocol, TinySampler(), scorer, ref, device=device, dist=None)
        assert a.ok and b.ok, (a.error, b.error)
        assert a.scores == b.scores, device  # same checkpoint twice -> identical, on each device
        results[device] = a.scores
    for name, value in results["cpu"].items():
        if value is None:
            continue
        # TF32/cuDNN kernels differ from the CPU's; the pipeline itself adds no difference
        assert results["cuda"][name] == pytest.approx(value, rel=5e-2, abs=1e-3), name


def test_inline_and_background_runners_on_cuda(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    for mode in ("inline", "background"):
        ckpt_dir = tmp_path / mode
        ckpt_dir.mkdir()
        tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, keep_every_n_steps=0)
        if mode == "inline":
            runner = InlineRunner(tracker, Evaluator(protocol, TinySampler(), scorer=__import__("pipeline_kit").KitScorer(),
                                                     device="cuda", dist=None), EvalSchedule(every_n_checkpoints=1))
        else:
            runner = BackgroundRunner(tracker, protocol, "pipeline_kit:make_sampler", scorer_spec="pipeline_kit:make_kit_scorer",
                                      schedule=EvalSchedule(every_n_checkpoints=1), device="cuda")
        for step in (100, 200):
            runner.checkpoint_saved(step, save_checkpoint(ckpt_dir / f"{step:07d}.pt", step))
        runner.close()
        assert [r.status for r in tracker.records] == ["evaluated", "evaluated"], mode
