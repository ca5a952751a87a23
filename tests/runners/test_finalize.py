"""``bestckpt finalize``: the truly better checkpoint wins under a larger protocol even when the training protocol
ranked it second; nothing moves without a confirmed lead; an interrupted finalize resumes; a finalized best
outranks later training evaluations. The demo case is constructed in tests/support/finalize_case.py
(docs/finalize.md, "The test case")."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import finalize_case as fc
import pytest
import torch
from pipeline_kit import InterruptedEvaluator

from bestckpt.cli import main
from bestckpt.cli.status import collect
from bestckpt.runners import Evaluator, reconcile_protocol
from bestckpt.runners.finalize import DECISION_FILE, decide, derive_protocol, finalize, select_finalists
from bestckpt.tracking.finalized import final_of
from bestckpt.tracking.policies import Candidate
from bestckpt.tracking.state import Record
from bestckpt.tracking.tracker import BestCheckpointTracker

SPEC = "bestckpt.demo.sampler:make_sampler"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        saved = fc.train(tmp_path_factory.mktemp("trained"))
        prompt, margin, acc_late, acc_early = fc.tiny_prompt(saved[fc.EARLY], saved[fc.LATE])
    finally:
        torch.set_num_threads(before)
    return {"saved": saved, "prompt": prompt, "margin": margin, "acc_late": acc_late, "acc_early": acc_early}


def _run_dir(tmp_path: Path, files: dict[int, Path]) -> Path:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for step, src in files.items():
        shutil.copy2(src, ckpt / f"{step:07d}.pt")
    BestCheckpointTracker(ckpt, metric_name="clip_score", higher_is_better=True, save_top_k=2, is_writer=True)
    return ckpt


def _best_link(ckpt: Path) -> str:
    return str((ckpt / "best.pt").readlink())


def test_finalize_confirms_the_truly_better_one_and_later_training_evaluations_do_not_move_it_back(
        case: dict[str, Any], tmp_path: Path, one_thread: None) -> None:
    assert case["acc_late"] > case["acc_early"], "the later checkpoint must be the truly better one"
    assert case["margin"] > 0, "the tiny protocol's prompt must favour the worse checkpoint"
    ckpt = _run_dir(tmp_path, case["saved"])
    tiny, full = fc.protocol([case["prompt"]], 1, "tiny"), fc.full_protocol()
    tiny.to_file(tmp_path / "tiny.json")
    full.to_file(tmp_path / "full.json")
    common = ["--sampler", SPEC, "--device", "cpu", "--samples-dir", str(tmp_path / "samples")]
    assert main(["evaluate", str(ckpt), "--protocol", str(tmp_path / "tiny.json"), *common]) == 0
    assert BestCheckpointTracker.open(ckpt).best.step == fc.EARLY  # type: ignore[union-attr]  # the wrong way

    assert main(["finalize", str(ckpt), "--protocol", str(tmp_path / "tiny.json"), "--final-protocol",
                 str(tmp_path / "full.json"), *common]) == 0
    decision = json.loads((ckpt / DECISION_FILE).read_text())
    assert (decision["chosen"], decision["incumbent"], decision["confirmed"], decision["moved"]) == (
        fc.LATE, fc.EARLY, True, True), decision["reason"]
    assert _best_link(ckpt) == f"{fc.LATE:07d}.pt"
    records = {r.step: r for r in BestCheckpointTracker.open(ckpt).records}
    for rec in records.values():  # the final scores sit beside the training ones, under the full protocol's id
        assert rec.protocol_hash == tiny.hash and set(final_of(rec)["scores"]) == {full.hash}
        assert "finalizing" not in final_of(rec)
    assert "chosen" in final_of(records[fc.LATE]) and "chosen" not in final_of(records[fc.EARLY])

    # a later save that the training protocol scores above the finalized best, and a forced re-score of all
    shutil.copy2(case["saved"][fc.EARLY], ckpt / "0000060.pt")
    assert main(["evaluate", str(ckpt), "--protocol", str(tmp_path / "tiny.json"), *common]) == 0
    assert main(["evaluate", str(ckpt), "--protocol", str(tmp_path / "tiny.json"), "--force", *common]) == 0
    tracker = BestCheckpointTracker.open(ckpt, is_writer=True)
    scores = {r.step: r.score("clip_score") for r in tracker.records}
    assert scores[60] > scores[fc.LATE]  # type: ignore[operator]
    assert tracker.best.step == fc.LATE and _best_link(ckpt) == f"{fc.LATE:07d}.pt"  # type: ignore[union-attr]
    assert reconcile_protocol(tracker, tiny) == []  # a resumed training run under its protocol is not refused
    tracker.mark_for_rescoring(fc.LATE)  # e.g. a changed training protocol: the choice holds while it is re-scored
    assert tracker.best.step == fc.LATE  # type: ignore[union-attr]
    assert main(["evaluate", str(ckpt), "--protocol", str(tmp_path / "tiny.json"), *common]) == 0
    assert BestCheckpointTracker.open(ckpt).best.step == fc.LATE  # type: ignore[union-attr]
    assert main(["status", str(ckpt)]) == 0
    assert collect(ckpt)["finalize"]["chosen"] == fc.LATE  # `bestckpt status --json` carries the decision



def test_an_interrupted_finalize_keeps_its_finalists_and_resumes(case: dict[str, Any], tmp_path: Path,
                                                                 one_thread: None) -> None:
    ckpt = _run_dir(tmp_path, case["saved"])
    tracker = BestCheckpointTracker.open(ckpt, is_writer=True)
    training = Evaluator(fc.protocol([case["prompt"]], 1, "tiny"), fc.DemoSampler(), device="cpu", dist=None)
    for step, path in sorted(case["saved"].items()):
        tracker.checkpoint_saved(step, path.name)
        assert training.evaluate_and_record(tracker, step, ckpt / path.name).ok
    final = fc.full_protocol(48)
    first = InterruptedEvaluator(final, fc.DemoSampler(), device="cpu", dist=None, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        finalize(tracker, first)
    records = {r.step: r for r in tracker.records}
    assert [s for s, r in records.items() if final.hash in final_of(r).get("scores", {})] == [fc.EARLY]
    plan = {d.step: d for d in tracker.plan()}
    assert all(plan[s].keep and any("finalist" in why for why in plan[s].reasons) for s in records)
    assert tracker.best.step == fc.EARLY  # type: ignore[union-attr]  # nothing decided yet

    again = InterruptedEvaluator(final, fc.DemoSampler(), device="cpu", dist=None)
    decision = finalize(tracker, again)
    assert again.calls == 1  # the finalist scored before the interruption is not scored again
    assert (decision.chosen, decision.moved) == (fc.LATE, True), decision.reason
    assert all("finalizing" not in final_of(r) for r in tracker.records)


def test_no_move_when_the_lead_is_within_noise(case: dict[str, Any], tmp_path: Path, one_thread: None) -> None:
    """The finalized checkpoint and a copy with slightly perturbed weights: the larger protocol cannot tell them
    apart, so the training protocol's pick (set here to the one the larger protocol places second) stays."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    shutil.copy2(case["saved"][fc.LATE], ckpt / f"{fc.LATE:07d}.pt")
    state = torch.load(case["saved"][fc.LATE], weights_only=False)
    g = torch.Generator().manual_seed(0)
    state["model"] = {k: v + 1e-3 * v.std().nan_to_num() * torch.randn(v.shape, generator=g) if v.is_floating_point()
                      else v for k, v in state["model"].items()}
    fc.save_checkpoint(ckpt / "0000070.pt", state)
    final = derive_protocol(fc.full_protocol(24), 2)  # 24 prompts, 2 seeds each
    probe = Evaluator(final, fc.DemoSampler(), device="cpu", dist=None)
    final_scores = {s: probe.evaluate(s, ckpt / f"{s:07d}.pt").scores["clip_score"] for s in (fc.LATE, 70)}
    trailing = min(final_scores, key=lambda s: final_scores[s])  # type: ignore[arg-type, return-value]
    tracker = BestCheckpointTracker(ckpt, metric_name="clip_score", higher_is_better=True, save_top_k=2,
                                    is_writer=True)
    for step in (fc.LATE, 70):  # the training ranking under test: the trailing one first
        tracker.update_checkpoint(step, None, f"{step:07d}.pt", {"clip_score": 0.9 if step == trailing else 0.1},
                                  protocol_hash="training")
    decision = finalize(tracker, Evaluator(final, fc.DemoSampler(), device="cpu", dist=None))
    assert decision.leader != trailing and not decision.confirmed and not decision.moved, decision.reason
    assert decision.chosen == trailing and "noise margin" in decision.reason
    assert tracker.best.step == trailing and _best_link(ckpt) == f"{trailing:07d}.pt"  # type: ignore[union-attr]


def _cand(step: int, score: float, half: float | None) -> Candidate:
    return Candidate(step, f"{step}.pt", "evaluated", score, interval=None if half is None else (score - half,
                                                                                                 score + half))


def test_decide_moves_only_beyond_noise() -> None:
    close = [_cand(1, 0.50, 0.05), _cand(2, 0.52, 0.05)]
    assert decide(close, 1, True)[:3] == (1, 2, False)
    far = [_cand(1, 0.50, 0.01), _cand(2, 0.60, 0.01)]
    assert decide(far, 1, True)[:3] == (2, 2, True)
    assert decide(far, 2, False)[:3] == (1, 1, True)  # lower is better: step 1 leads
    assert decide([_cand(1, 0.5, None), _cand(2, 0.9, None)], 1, True)[:3] == (1, 2, False)  # no intervals
    assert decide([_cand(2, 0.9, 0.01)], 1, True)[:3] == (1, 2, False)  # the incumbent could not be scored
    assert decide([_cand(1, 0.5, 0.0), _cand(2, 0.5, 0.0)], 2, True)[:3] == (2, 2, True)  # a tie keeps it


def test_finalists_are_the_top_k_the_overlapping_and_the_best() -> None:
    def rec(step: int, score: float, half: float) -> Record:
        return Record(step, None, f"{step}.pt", {"s": score}, "evaluated", 0.0,
                      info={"intervals": {"s": [score - half, score + half]}})

    records = [rec(1, 0.9, 0.01), rec(2, 0.8, 0.01), rec(3, 0.7, 0.25), rec(4, 0.1, 0.01), rec(5, 0.05, 0.0)]
    assert [r.step for r in select_finalists(records, "s", True, 2, 5)] == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="samples_factor"):
        derive_protocol(fc.full_protocol(4), 1)
    assert derive_protocol(fc.full_protocol(4), 3).num_samples == 12


@pytest.mark.distributed
def test_finalize_runs_distributed_like_evaluate(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2` (gloo): both ranks finalize alike, rank 0 records; same outcome as 1 process."""
    from pipeline_kit import KitScorer, TinySampler, make_protocol, save_checkpoint
    from torchrun_kit import run_script

    final = make_protocol(tmp_path, num_samples=8)
    final.to_file(tmp_path / "final.json")
    runs = {}
    for name in ("one", "two"):
        ckpt = tmp_path / name / "checkpoints"
        ckpt.mkdir(parents=True)
        tracker = BestCheckpointTracker(ckpt, save_top_k=2, is_writer=True)
        for step, score in ((10, 0.1), (20, 0.2)):
            save_checkpoint(ckpt / f"{step:07d}.pt", step)
            tracker.update_checkpoint(step, None, f"{step:07d}.pt", {"composite_score": score}, protocol_hash="train")
        runs[name] = tracker
    shutil.copy2(tmp_path / "final.json", tmp_path / "two" / "final.json")
    one = finalize(runs["one"], Evaluator(final, TinySampler(), scorer=KitScorer(), device="cpu", dist=None))
    run_script("dist_finalize_worker.py", tmp_path / "two")
    outs = [json.loads((tmp_path / "two" / f"out_{r}.json").read_text()) for r in (0, 1)]
    assert json.loads((tmp_path / "two" / "checkpoints" / DECISION_FILE).read_text())["chosen"] == one.chosen
    for out in outs:
        assert (out["chosen"], out["leader"], out["confirmed"]) == (one.chosen, one.leader, one.confirmed)
    stored = {r.step: final_of(r)["scores"][final.hash]["metrics"] for r in BestCheckpointTracker.open(
        tmp_path / "two" / "checkpoints").records}
    assert stored == {r.step: final_of(r)["scores"][final.hash]["metrics"] for r in runs["one"].records}
