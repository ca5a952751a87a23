"""R4, infrastructure failures never cost a valid score: a failed re-evaluation of a scored checkpoint
keeps its earlier score (the failure is noted in the record); only a never-scored checkpoint becomes failed.
Also through the runners: a protocol change whose re-scoring setup fails (inline, background worker, sidecar)."""
from __future__ import annotations

import logging
import math
import queue
from pathlib import Path

import pytest
from hostile_guard import Guard

from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.timeout(120)

S = "composite_score"
OLD = "0" * 64  # the protocol hash the checkpoints were scored under


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    return Guard(tmp_path)


def _scored(guard: Guard, top_k: int = 1) -> BestCheckpointTracker:
    """Steps 1 (0.9, best), 2 (0.5), 3 (0.3): with top-1, steps 1 (best) and 3 (latest) stay on disk."""
    t = guard.tracker(save_top_k=top_k)
    for step, score in [(1, 0.9), (2, 0.5), (3, 0.3)]:
        t.update_checkpoint(step, 0, guard.save(step), {S: score, "fid": 10.0 * step}, protocol_hash=OLD)
    return t


def _more(guard: Guard, t: BestCheckpointTracker, *steps: int) -> None:
    for step in steps:
        t.update_checkpoint(step, 0, guard.save(step), {S: 0.01 * step}, protocol_hash=OLD)


def _kept_score(t: BestCheckpointTracker, step: int, score: float, why: str, caplog) -> None:
    """``step`` is still evaluated with ``score``; the failure is noted in the record and logged."""
    rec = {r.step: r for r in t.records}[step]
    assert rec.status == "evaluated" and rec.metrics[S] == score and not rec.pruned, rec
    assert rec.error.startswith("re-evaluation failed: ") and why in rec.error, rec.error
    assert why in rec.info["last_failure"]["error"]
    assert any(f"step {step}" in m and why in m and "kept" in m for m in caplog.messages), caplog.messages


def test_record_failure_on_the_best(guard: Guard, caplog) -> None:
    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t.record_failure(1, "CUDA out of memory")
    _kept_score(t, 1, 0.9, "CUDA out of memory", caplog)
    _more(guard, t, 4, 5)
    guard.check(t, best=1, keep=(5,))


def test_nan_rescore_of_the_best(guard: Guard, caplog) -> None:
    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    assert t.update_checkpoint(1, 0, None, {S: math.nan, "fid": 1.0}) is True  # still the best
    _kept_score(t, 1, 0.9, "is nan", caplog)
    assert t.records[0].metrics["fid"] == 10.0  # the earlier metrics, all of them
    _more(guard, t, 4, 5)
    guard.check(t, best=1, keep=(5,))


def test_missing_tracked_metric_on_a_top_k_member(guard: Guard, caplog) -> None:
    t = _scored(guard, top_k=2)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t.update_checkpoint(2, 0, None, {"clip_score": 0.3})
    _kept_score(t, 2, 0.5, "missing", caplog)
    _more(guard, t, 4, 5)
    guard.check(t, best=1, keep=(2, 5))


def test_metrics_none_rescore_of_the_best(guard: Guard, caplog) -> None:
    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t.update_checkpoint(1, 0, None, None)
    _kept_score(t, 1, 0.9, "mapping", caplog)
    _more(guard, t, 4)
    guard.check(t, best=1, keep=(4,))


def test_overflowing_rescore_of_the_best(guard: Guard, caplog) -> None:
    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t.update_checkpoint(1, 0, None, {S: -10**400})
    _kept_score(t, 1, 0.9, "-inf", caplog)
    _more(guard, t, 4)
    guard.check(t, best=1, keep=(4,))


def test_a_never_scored_checkpoint_still_becomes_failed(guard: Guard) -> None:
    """Control: a pending checkpoint whose evaluation fails is failed, never best, prunable."""
    t = _scored(guard)
    t.checkpoint_saved(4, guard.save(4))
    t.record_failure(4, "CUDA out of memory")
    rec = {r.step: r for r in t.records}[4]
    assert rec.status == "failed" and rec.error == "CUDA out of memory"
    _more(guard, t, 5)
    assert not (guard.ckdir / "0000004.pt").exists()
    guard.check(t, best=1, keep=(5,))


def test_failed_then_successful_rescore(guard: Guard) -> None:
    t = _scored(guard)
    t.record_failure(1, "weights file missing")
    assert t.update_checkpoint(1, 0, None, {S: 0.2}) is False  # a real new score replaces the old one
    rec = t.records[0]
    assert rec.status == "evaluated" and rec.metrics[S] == 0.2 and rec.error is None
    assert "last_failure" not in rec.info
    guard.check(t, best=3)


def test_failed_rescore_survives_a_reload(guard: Guard) -> None:
    t = _scored(guard)
    t.record_failure(1, "CUDA out of memory")
    again = guard.tracker(save_top_k=1)
    assert again.records == t.records and again.best.error.endswith("CUDA out of memory")
    _more(guard, again, 4)
    guard.check(again, best=1, keep=(4,))


# ------------------------------------------------------------------ through the runners
class _OOMScorer:
    """A scorer whose reference statistics cannot be computed (the new protocol's setup fails)."""

    def reference_statistics(self, images, cache_dir=None):
        raise RuntimeError("CUDA out of memory while computing the reference statistics")


def _new_protocol(tmp_path: Path):
    from pipeline_kit import make_protocol

    protocol = make_protocol(tmp_path)
    assert protocol.hash != OLD
    return protocol


def _restored(t: BestCheckpointTracker, caplog) -> None:
    """Steps 1 and 3 are scored again under the old protocol (3 may have been pruned since, as scored)."""
    recs = {r.step: r for r in t.records}
    for step, score in [(1, 0.9), (3, 0.3)]:
        assert recs[step].status == "evaluated" and recs[step].metrics[S] == score, recs[step]
        assert recs[step].protocol_hash == OLD and "re-evaluation failed" in recs[step].error
    assert any("kept" in m for m in caplog.messages)


def test_protocol_change_whose_setup_fails_inline(guard: Guard, tmp_path: Path, caplog) -> None:
    from pipeline_kit import TinySampler

    from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner

    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    evaluator = Evaluator(_new_protocol(tmp_path), TinySampler(), scorer=_OOMScorer(), dist=None)
    runner = InlineRunner(t, evaluator, EvalSchedule(every_n_checkpoints=1), on_protocol_change="rescore")
    runner.checkpoint_saved(4, guard.save(4), epoch=0)  # re-scores 1 and 3 first: both fail, then 4 fails
    runner.close()
    _restored(t, caplog)
    guard.check(t, best=1, keep=(4,))


def test_protocol_change_whose_setup_fails_in_the_background_worker(guard: Guard, tmp_path: Path, caplog) -> None:
    from bestckpt.runners.protocol_change import reconcile_protocol
    from bestckpt.runners.worker import background_main

    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    protocol = _new_protocol(tmp_path)
    stale = reconcile_protocol(t, protocol, "rescore")
    assert stale == [1, 3]
    jobs: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    for rec in t.records:
        if rec.step in stale:
            jobs.put((rec.step, str(guard.ckdir / rec.path), rec.epoch))
    jobs.put(None)
    spec = {"tracker_config": t.config, "protocol": protocol, "sampler": "pipeline_kit:no_such_factory",
            "scorer": None, "device": "cpu", "samples_dir": None, "tensorboard_dir": None, "weights_dir": None,
            "cache_dir": None, "batch_size": 4, "threads": None, "log_file": None, "log_level": logging.INFO}
    background_main(jobs, results, spec)  # in this process: setup fails, every job is recorded as failed
    assert [results.get_nowait()["ok"] for _ in stale] == [False, False]
    _restored(t, caplog)
    _more(guard, t, 4, 5)
    guard.check(t, best=1, keep=(5,))


def test_protocol_change_whose_setup_fails_in_the_sidecar(guard: Guard, tmp_path: Path, caplog) -> None:
    from pipeline_kit import TinySampler

    from bestckpt.runners import Evaluator
    from bestckpt.runners.sidecar import SidecarWatcher

    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    evaluator = Evaluator(_new_protocol(tmp_path), TinySampler(), scorer=_OOMScorer(), dist=None)
    watcher = SidecarWatcher(t, evaluator, adopt_after=None, on_protocol_change="rescore")
    assert watcher.run(once=True) == 2
    _restored(t, caplog)
    _more(guard, t, 4, 5)
    guard.check(t, best=1, keep=(5,))


def test_evaluation_crash_recorded_by_the_evaluator_on_the_best(guard: Guard, tmp_path: Path, caplog) -> None:
    from pipeline_kit import TinySampler

    from bestckpt.runners import Evaluator

    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    evaluator = Evaluator(_new_protocol(tmp_path), TinySampler(), scorer=_OOMScorer(), dist=None)
    result = evaluator.evaluate_and_record(t, 1, guard.ckdir / "0000001.pt", 0)
    assert not result.ok
    _kept_score(t, 1, 0.9, "CUDA out of memory", caplog)
    _more(guard, t, 4)
    guard.check(t, best=1, keep=(4,))


def test_evaluator_scores_that_are_not_numbers_on_the_best(guard: Guard, tmp_path: Path, caplog) -> None:
    """A metric returning a string: recorded as a failed re-evaluation, never left pending or lost."""
    from pipeline_kit import TinySampler

    from bestckpt.evaluation.evaluate import EvaluationResult
    from bestckpt.runners import Evaluator

    t = _scored(guard)
    caplog.set_level(logging.WARNING, logger="bestckpt")
    protocol = _new_protocol(tmp_path)
    evaluator = Evaluator(protocol, TinySampler(), scorer=_OOMScorer(), dist=None)
    result = EvaluationResult(step=1, scores={S: "high"}, protocol_hash=protocol.hash, weights="ema", duration=1.0)
    evaluator.record(t, result, path=guard.ckdir / "0000001.pt", epoch=0)
    _kept_score(t, 1, 0.9, "'high'", caplog)
    _more(guard, t, 4)
    guard.check(t, best=1, keep=(4,))
