"""The composite's definition (weights and mapping scales) is part of the protocol: hashed, round-tripped through
the protocol file, used by the scorer, and recomputable from stored metrics without re-sampling."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from bestckpt.errors import ProtocolError
from bestckpt.evaluation.composite import composite_definition, composite_shares, recompute_composite
from bestckpt.evaluation.protocol import Protocol
from bestckpt.metrics.composite import InverseMap, composite_score, default_mappings, mapping_from_dict, mapping_to_dict
from bestckpt.runners.evaluator import build_scorer

METRICS = ("clip_score", "inception_score", "composite_score")
STORED = {"clip_score": 0.6, "inception_score": 4.0, "fid": 800.0, "lpips": 0.4}


def _protocol(**kw: object) -> Protocol:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Protocol(**{"prompts": ("a red circle",), "num_samples": 4, **kw})  # type: ignore[arg-type]


def test_protocols_without_mappings_keep_the_hash_they_had() -> None:
    # values computed by the code before composite mappings existed: stored scores of old runs stay comparable
    p = _protocol(metrics=METRICS, composite_weights={"clip_score": 0.5, "inception_score": 0.5})
    assert p.hash == "65bdb4fd9869c0554b5c46074c9d84f70024befbc79b7f9e16c28381d91da6f5"
    assert _protocol(metrics=("clip_score", "composite_score")).hash == (
        "8475937867babdea9555ad2492b8ed3432cb572ba94fea6d4a575d6280afbe3e")


def test_a_new_mapping_scale_is_a_new_protocol_with_the_same_metrics() -> None:
    base = _protocol(metrics=METRICS)
    scaled = _protocol(metrics=METRICS, composite_mappings={"inception_score": {"type": "ratio", "scale": 5}})
    other = _protocol(metrics=METRICS, composite_mappings={"inception_score": {"type": "ratio", "scale": 6}})
    assert len({base.hash, scaled.hash, other.hash}) == 3
    assert base.metrics_hash == scaled.metrics_hash == other.metrics_hash
    reweighted = _protocol(metrics=METRICS, composite_weights={"clip_score": 1.0, "inception_score": 2.0})
    assert reweighted.hash != base.hash and reweighted.metrics_hash == base.metrics_hash
    assert _protocol(metrics=METRICS, num_samples=8).metrics_hash != base.metrics_hash  # sampling changed


def test_mappings_round_trip_through_the_protocol_file(tmp_path: Path) -> None:
    p = _protocol(metrics=METRICS, composite_mappings={"inception_score": {"type": "ratio", "scale": 5}})
    q = Protocol.from_file(p.to_file(tmp_path / "protocol.json"))
    assert q.hash == p.hash and dict(q.composite_mappings["inception_score"]) == {"type": "ratio", "scale": 5.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Protocol.from_file(_protocol(metrics=METRICS).to_file(tmp_path / "b.json")).composite_mappings is None


def test_recompute_from_stored_metrics_uses_the_new_definition() -> None:
    old = _protocol(metrics=METRICS)
    new = _protocol(metrics=METRICS, composite_mappings={"inception_score": {"type": "ratio", "scale": 5}})
    weights = {"clip_score": 0.4, "inception_score": 0.3}
    maps = default_mappings()
    assert recompute_composite(STORED, old) == pytest.approx(composite_score(STORED, weights, maps))
    expected = composite_score(STORED, weights, {**maps, "inception_score": mapping_from_dict(
        {"type": "ratio", "scale": 5})})
    assert recompute_composite(STORED, new) == pytest.approx(expected) != pytest.approx(recompute_composite(STORED, old))
    # the scorer the runners build from the protocol uses the same definition
    resolved = build_scorer(new)._composite_resolved
    assert resolved == composite_definition(new)


def test_shares_sum_to_the_composite_change() -> None:
    weights, maps = {"fid": 0.5, "clip_score": 0.5}, {"fid": InverseMap(300.0), "clip_score": default_mappings()["clip_score"]}
    first, last = {"fid": 1260.0, "clip_score": 0.2}, {"fid": 200.0, "clip_score": 0.8}
    shares = composite_shares(first, last, weights, maps)
    assert sum(shares.values()) == pytest.approx(composite_score(last, weights, maps) - composite_score(first, weights, maps))
    assert shares["fid"] == pytest.approx(0.5 * (1 / (1 + 200 / 300) - 1 / (1 + 1260 / 300)))


@pytest.mark.parametrize("bad", [{"type": "inverse", "scale": 0}, {"type": "inverse"}, {"type": "cubic"},
                                 {"type": "inverse", "scale": 5, "center": 1}, {"type": "linear", "lo": 1, "hi": 0},
                                 "inverse"])
def test_a_bad_mapping_is_refused_with_the_fix(bad: object) -> None:
    with pytest.raises(ProtocolError, match="composite_mappings"):
        _protocol(metrics=METRICS, composite_mappings={"fid": bad})


def test_mapping_json_round_trip() -> None:
    for m in (*default_mappings().values(), InverseMap(300.0)):
        assert mapping_from_dict(mapping_to_dict(m)) == m


def test_a_resumed_run_recomputes_the_composite_instead_of_resampling(tmp_path: Path) -> None:
    from bestckpt.errors import ProtocolChangedError
    from bestckpt.runners.protocol_change import reconcile_protocol
    from bestckpt.tracking.tracker import BestCheckpointTracker

    old = _protocol(metrics=METRICS)
    new = _protocol(metrics=METRICS, composite_mappings={"inception_score": {"type": "ratio", "scale": 5}})
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=3)
    stored = {"clip_score": 0.6, "inception_score": 4.0}
    for step, metrics_hash in ((100, old.metrics_hash), (200, "another-sampling")):
        (ckpt_dir / f"{step:07d}.pt").write_bytes(b"weights")
        tracker.update_checkpoint(step, 0, ckpt_dir / f"{step:07d}.pt",
                                  {**stored, "composite_score": recompute_composite(stored, old)},
                                  protocol_hash=old.hash, info={"metrics_hash": metrics_hash})
    # 100 differs only in the composite: recomputed; 200 was sampled differently: refused as before
    with pytest.raises(ProtocolChangedError, match=r"\[200\]"):
        reconcile_protocol(tracker, new, "refuse")
    recs = {r.step: r for r in tracker.records}
    assert recs[100].protocol_hash == new.hash and recs[100].info["recomposed_from"] == old.hash
    assert recs[100].metrics["composite_score"] == pytest.approx(recompute_composite(stored, new))
    assert recs[100].metrics["clip_score"] == 0.6 and recs[200].protocol_hash == old.hash
    assert reconcile_protocol(tracker, new, "rescore") == [200]
