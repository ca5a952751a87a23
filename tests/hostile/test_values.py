"""R5, values survive a reload or are refused at the call: epochs, steps, metric names and values,
``info``; one coercion at the call and at the state parse; hand-edited states never lose the best silently."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hostile_guard import Guard, clear_message, edit_state

from bestckpt.errors import ConfigError
from bestckpt.tracking.tracker import BestCheckpointTracker

pytestmark = pytest.mark.timeout(60)

S = "composite_score"


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    return Guard(tmp_path)


def _populated(guard: Guard, **kwargs) -> BestCheckpointTracker:
    """Steps 1 (0.9, best) and 2 (0.5) kept by top-2."""
    t = guard.tracker(save_top_k=2, **kwargs)
    t.update_checkpoint(1, 0, guard.save(1), {S: 0.9, "fid": 10.0})
    t.update_checkpoint(2, 1, guard.save(2), {S: 0.5, "fid": 20.0})
    return t


def _state(guard: Guard) -> bytes:
    return (guard.ckdir / "best_checkpoints.json").read_bytes()


def _refused(guard: Guard, t: BestCheckpointTracker, call, *needles: str) -> None:
    """``call()`` raises ConfigError naming ``needles``, and changes neither the state nor the records."""
    before, records = _state(guard), t.records
    with pytest.raises(ConfigError) as ei:
        call()
    clear_message(ei.value, *needles)
    assert _state(guard) == before and t.records == records


def _reloaded(guard: Guard, t: BestCheckpointTracker) -> None:
    """A fresh writer reads exactly the records the live tracker holds."""
    again = guard.tracker(save_top_k=t.save_top_k)
    assert again.records == t.records


# ------------------------------------------------------------------ epoch and step
@pytest.mark.parametrize("epoch", [2.5, "3", True, -1])
def test_epoch_that_is_not_an_int_is_refused_at_the_call(guard: Guard, epoch) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, epoch, path, {S: 0.95}), "epoch", repr(epoch), "int >= 0")
    guard.check(t, best=1, keep=(2,))
    _reloaded(guard, t)


def test_epoch_refused_by_checkpoint_saved(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.checkpoint_saved(3, path, epoch=2.5), "epoch", "2.5", "int >= 0")
    guard.check(t, best=1, keep=(2,))


def test_epoch_refused_by_record_failure(guard: Guard) -> None:
    t = _populated(guard)
    t.checkpoint_saved(3, guard.save(3))
    _refused(guard, t, lambda: t.record_failure(3, "oom", epoch="3"), "epoch", "'3'", "int >= 0")
    guard.check(t, best=1, keep=(3,))


def test_numpy_int_epoch_is_stored_as_an_int(guard: Guard) -> None:
    t = _populated(guard)
    t.update_checkpoint(3, np.int64(4), guard.save(3), {S: 0.1})
    rec = {r.step: r for r in t.records}[3]
    assert rec.epoch == 4 and type(rec.epoch) is int
    _reloaded(guard, t)
    guard.check(t, best=1, keep=(3,))


def test_bool_step_is_refused(guard: Guard) -> None:
    """``True`` is not step 1."""
    t = _populated(guard)
    before = _state(guard)
    with pytest.raises((TypeError, ValueError)) as ei:
        t.update_checkpoint(True, 0, guard.ckdir / "0000001.pt", {S: 0.0})
    clear_message(ei.value, "step", "True")
    assert _state(guard) == before
    guard.check(t, best=1, keep=(2,))


# ------------------------------------------------------------------ metric values and names
def test_tracked_metric_true_is_not_a_score(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: True}), S, "True", "float")
    guard.check(t, best=1, keep=(2,))


def test_metric_string_that_python_would_parse(guard: Guard) -> None:
    """``float("1_000") == 1000.0``: a string is refused, not parsed."""
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.4, "fid": "1_000"}), "'fid'", "1_000", "float")
    guard.check(t, best=1, keep=(2,))


def test_metric_bytes(guard: Guard) -> None:
    """``float(b"1") == 1.0``: bytes are refused."""
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: b"1"}), S, "b'1'", "float")
    guard.check(t, best=1, keep=(2,))


def test_metric_container(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.3, "kid": [1]}), "'kid'", "[1]", "float")
    guard.check(t, best=1, keep=(2,))


def test_numpy_bool_metric(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: np.bool_(True)}), S, "True", "float")
    guard.check(t, best=1, keep=(2,))


def test_metric_name_that_is_not_a_string(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.3, 7: 0.1}), "metric name", "7", "str")
    guard.check(t, best=1, keep=(2,))


def test_huge_int_tracked_metric_is_infinite_and_fails(guard: Guard) -> None:
    """``10**400`` must not raise OverflowError: it is +inf, so the evaluation failed (never best)."""
    t = _populated(guard)
    assert t.update_checkpoint(3, 0, guard.save(3), {S: 10**400}) is False
    rec = {r.step: r for r in t.records}[3]
    assert rec.status == "failed" and rec.metrics[S] == math.inf and "inf" in rec.error
    json.loads(_state(guard), parse_constant=lambda c: pytest.fail(f"bare {c} in the state"))
    _reloaded(guard, t)
    guard.check(t, best=1, keep=(3,))


def test_huge_negative_int_in_another_metric_round_trips(guard: Guard) -> None:
    t = _populated(guard)
    assert t.update_checkpoint(3, 0, guard.save(3), {S: 0.95, "fid": -10**400}) is True
    assert {r.step: r for r in t.records}[3].metrics["fid"] == -math.inf
    _reloaded(guard, t)
    guard.check(t, best=3, keep=(1,))


def test_numpy_scalars_are_plain_floats_and_round_trip(guard: Guard) -> None:
    t = _populated(guard)
    t.update_checkpoint(3, 0, guard.save(3), {S: np.float32(0.95), "fid": np.float64(1.5), "n": np.int64(7)})
    rec = {r.step: r for r in t.records}[3]
    assert all(type(v) is float for v in rec.metrics.values()), rec.metrics
    assert rec.metrics[S] == float(np.float32(0.95))
    _reloaded(guard, t)
    guard.check(t, best=3, keep=(1,))


def test_nan_in_a_non_tracked_metric_keeps_the_best(guard: Guard) -> None:
    t = _populated(guard)
    assert t.update_checkpoint(3, 0, guard.save(3), {S: 0.95, "fid": math.nan}) is True
    again = guard.tracker(save_top_k=2)
    assert again.best.step == 3 and math.isnan(again.best.metrics["fid"])
    guard.check(again, best=3, keep=(1,))


def test_protocol_hash_that_is_not_text(guard: Guard) -> None:
    """A bytes hash was accepted, then made the state write fail half-way through the call."""
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.95}, protocol_hash=b"\x00abc"),
             "protocol_hash", "b'\\x00abc'", "str")
    _refused(guard, t, lambda: t.record_failure(3, "oom", checkpoint_path=path, protocol_hash=7), "protocol_hash", "7")
    guard.check(t, best=1, keep=(2,))
    _reloaded(guard, t)


def test_info_that_is_not_json_is_refused(guard: Guard) -> None:
    t = _populated(guard)
    path = guard.save(3)
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.95}, info={"device": object()}),
             "info", "'device'", "JSON")
    _refused(guard, t, lambda: t.update_checkpoint(3, 0, path, {S: 0.95}, info={"seeds": {1, 2}}),
             "info", "'seeds'", "JSON")
    guard.check(t, best=1, keep=(2,))


def test_every_accepted_value_survives_a_reload(guard: Guard) -> None:
    t = _populated(guard)
    t.update_checkpoint(3, np.int64(2), guard.save(3), {S: 0.7, "fid": None, "kid": 10**400, "n": 3},
                        info={"weights": "ema", "seeds": [1, 2], "cfg": {"lr": 1e-4, "ok": True, "none": None}})
    t.record_failure(4, "CUDA out of memory", epoch=3, checkpoint_path=guard.save(4))
    _reloaded(guard, t)
    guard.check(t, best=1, keep=(4,))


# ------------------------------------------------------------------ hand-edited states
def test_hand_edited_string_epoch_on_the_best_keeps_the_best(guard: Guard, caplog) -> None:
    _populated(guard)
    edit_state(guard.ckdir, lambda recs: recs[1].update(epoch="3"))
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = guard.tracker(save_top_k=2)
    assert any("step 1" in m and "'3'" in m and "epoch" in m for m in caplog.messages), caplog.messages
    t.update_checkpoint(3, 0, guard.save(3), {S: 0.1})
    t.update_checkpoint(4, 0, guard.save(4), {S: 0.2})
    guard.check(t, best=1, keep=(2, 4))


def test_hand_edited_true_metric_on_the_best_is_never_dropped_silently(guard: Guard, caplog) -> None:
    _populated(guard)
    edit_state(guard.ckdir, lambda recs: recs[1]["metrics"].update({S: True}))
    caplog.set_level(logging.WARNING, logger="bestckpt")
    t = guard.tracker(save_top_k=2)
    loud = [m for m in caplog.messages if "step 1" in m and S in m and "True" in m]
    assert loud and "best_checkpoints.json" in loud[0] and "edit" in loud[0], caplog.messages
    for step, score in [(3, 0.1), (4, 0.2), (5, 0.3)]:
        t.update_checkpoint(step, 0, guard.save(step), {S: score})
    assert (guard.ckdir / "0000001.pt").read_bytes() == b"weights of step 1"  # never deleted
    assert b'"step":1' in _state(guard).replace(b" ", b"")  # the entry is kept for the user to fix
    guard.check(t, best=2, keep=(5,))
