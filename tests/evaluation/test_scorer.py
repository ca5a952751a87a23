"""Scorer: one pass per backbone, per-sample (shardable) features, reference statistics cached on disk by content,
scores equal to the pure metric functions, explicit failures (never made-up numbers), composite configuration."""
from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from bestckpt.backbones import get_backbone, register_backbone
from bestckpt.evaluation.scorer import CompositeConfig, Scorer
from bestckpt.metrics import (
    MetricError,
    clip_score,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
    register_metric,
    unregister_metric,
)

# Real, small backbones keep this module fast on 2 shared cores: the demo evaluators (kind inception / clip,
# registered by bestckpt.demo.evaluators) and the random AlexNet LPIPS. The FID Inception itself is covered by
# test_backbones_inception (at 299x299 on CPU every image costs seconds).
RANDOM = {"inception": "counting-inception", "clip": "demo-clip", "lpips": "lpips-alex-random-test"}
N, M = 4, 6
PROMPTS = ["a red square", "a blue circle", "two green triangles", "a yellow star"]
OPTS = {"kid": {"subsets": 5, "subset_size": 4}, "inception_score": {"splits": 2}}


class CountingInception:
    """A real inception-kind backbone (the demo classifier), counting how many images went through it."""

    def __init__(self) -> None:
        self.inner = get_backbone("inception", "demo-classifier")
        self.cache_id = "counting-" + self.inner.cache_id
        self.images_seen = 0

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.images_seen += images.shape[0]
        return self.inner.features(images)


register_backbone("inception", "counting-inception", lambda weights_dir, device: CountingInception(), replace=True)


def _u8(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(2)
    images, refs, ref_set = _u8(N, 1), _u8(N, 2), _u8(M, 3)
    cache = tmp_path_factory.mktemp("refcache")
    scorer = Scorer(backbones=RANDOM, metric_options=OPTS, cache_dir=cache)
    counter = scorer.backbone("inception")
    before = counter.images_seen
    feats = scorer.features(images, PROMPTS, refs)
    seen = counter.images_seen - before
    ref = scorer.reference_statistics(ref_set)
    return {"scorer": scorer, "images": images, "refs": refs, "ref_set": ref_set, "feats": feats, "seen": seen,
            "ref": ref, "cache": cache}


def test_features_are_per_sample_and_one_pass_per_backbone(data: dict[str, Any]) -> None:
    feats = data["feats"]
    assert data["seen"] == N  # pool features and logits from the same single pass
    assert feats["inception_pool"].shape[0] == N and feats["inception_logits"].shape[0] == N
    assert feats["clip_image"].shape[0] == N and feats["clip_text"].shape == feats["clip_image"].shape
    assert feats["lpips_distance"].shape == (N,) and torch.isfinite(feats["lpips_distance"]).all()


def test_scores_equal_pure_functions_and_shards_concatenate(data: dict[str, Any]) -> None:
    scorer: Scorer = data["scorer"]
    feats = data["feats"]
    ref = data["ref"]
    scores = scorer.score(feats, ref, seed=7, strict=True)
    ref_pool = ref["inception_pool"]
    assert scores["fid"] == pytest.approx(fid_from_features(feats["inception_pool"], ref_pool), rel=1e-9)
    assert (scores["kid"], scores["kid_std"]) == pytest.approx(
        kid_from_features(feats["inception_pool"], ref_pool, subsets=5, subset_size=4, seed=7), rel=1e-9)
    assert (scores["inception_score"], scores["inception_score_std"]) == pytest.approx(
        inception_score_from_logits(feats["inception_logits"], splits=2, seed=7))
    assert scores["clip_score"] == pytest.approx(clip_score(feats["clip_image"], feats["clip_text"]))
    assert scores["lpips"] == pytest.approx(float(feats["lpips_distance"].double().mean()))
    assert scores["composite_score"] is not None and 0 < scores["composite_score"] < 1 and not scores.failures

    # distributed contract: shards featurised separately and concatenated give the same scores (Inception's batch
    # invariance is tested in test_backbones_inception; here the cheaper backbones)
    light = Scorer(metrics=("clip_score", "lpips", "composite_score"), backbones=RANDOM)
    a = light.features(data["images"][:1], PROMPTS[:1], data["refs"][:1])
    b = light.features(data["images"][1:], PROMPTS[1:], data["refs"][1:])
    joined = {k: torch.cat([a[k], b[k]]) for k in a}
    for k in joined:
        assert torch.allclose(joined[k], feats[k], rtol=1e-4, atol=1e-5), k
    again = light.score(joined, None)
    for k in ("clip_score", "lpips"):
        assert again[k] == pytest.approx(scores[k], rel=1e-4, abs=1e-6), k


def test_reference_statistics_cached_on_disk_by_content(data: dict[str, Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    tmp_path = data["cache"]
    r1 = data["ref"]
    files = list(tmp_path.glob("refstats-*.npz"))
    assert len(files) == 1 and "counting-demo-classifier" in files[0].name
    assert r1.content_hash[:32] in files[0].name
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("refstats-")] == []  # no temporary left
    counter = data["scorer"].backbone("inception")
    seen = counter.images_seen
    s2 = Scorer(metrics=("fid",), backbones=RANDOM, cache_dir=tmp_path)
    r2 = s2.reference_statistics(data["ref_set"])
    assert counter.images_seen == seen  # loaded from disk, no Inception pass
    assert torch.equal(r2["inception_pool"], r1["inception_pool"])
    assert (r2.statistics.factor == r1.statistics.factor).all()
    # other reference images -> another cache entry
    s2.reference_statistics(data["ref_set"][:2])
    assert len(list(tmp_path.glob("refstats-*.npz"))) == 2
    # a damaged cache file is recomputed, never trusted
    files[0].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="bestckpt.evaluation.scorer"):
        r3 = Scorer(metrics=("fid",), backbones=RANDOM, cache_dir=tmp_path).reference_statistics(data["ref_set"])
    assert "unreadable" in caplog.text and torch.allclose(r3["inception_pool"], r1["inception_pool"])


def test_failures_are_explicit_and_composite_never_partial(data: dict[str, Any]) -> None:
    scorer: Scorer = data["scorer"]
    scores = scorer.score(data["feats"], None, seed=0)  # no reference set
    assert scores["fid"] is None and scores["kid"] is None and scores["composite_score"] is None
    assert "reference" in scores.failures["fid"].error
    assert "fid" in scores.failures["composite_score"].error
    assert scores["clip_score"] is not None  # the others are still reported
    with pytest.raises(MetricError, match="reference"):
        scorer.score(data["feats"], None, strict=True)


def test_without_references_and_with_missing_pairs(data: dict[str, Any]) -> None:
    scorer = Scorer(metrics=("clip_score", "lpips", "composite_score"), backbones=RANDOM)
    feats = scorer.features(data["images"], PROMPTS, [data["refs"][0], None, data["refs"][2], None])
    d = feats["lpips_distance"]
    assert torch.isnan(d[[1, 3]]).all() and torch.allclose(d[[0, 2]], data["feats"]["lpips_distance"][[0, 2]])
    scores = scorer.score(feats, None)
    assert scores["lpips"] == pytest.approx(float(d[[0, 2]].double().mean()))
    # composite over the computed metrics only (guide weights CLIP 0.4, LPIPS 0.2, renormalised)
    expected = (0.4 * (scores["clip_score"] + 1) / 2 + 0.2 / (1 + scores["lpips"] / 0.5)) / 0.6
    assert scores["composite_score"] == pytest.approx(expected)
    none = scorer.score(scorer.features(data["images"], PROMPTS, None), None)
    assert none["lpips"] is None and none["composite_score"] is None
    with pytest.raises(ValueError, match="prompts"):
        scorer.features(data["images"], PROMPTS[:2])
    with pytest.raises(ValueError, match="uint8"):
        scorer.features(data["images"].float(), PROMPTS)


def test_composite_config_and_custom_metric(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="does not compute"):
        Scorer(metrics=("clip_score", "composite_score"), backbones=RANDOM,
               composite=CompositeConfig(weights={"fid": 1.0}))
    with pytest.raises(ValueError, match="unknown metric"):
        Scorer(metrics=("nope",))
    register_metric("clip_image_spread", lambda f, ref, seed: float(f["clip_image"].std(dim=0).mean()),
                    higher_is_better=True, needs=("clip_image",), composite_weight=0.5)
    try:
        scorer = Scorer(metrics=("clip_score", "clip_image_spread", "composite_score"), backbones=RANDOM)
        scores = scorer.score(data["feats"], None)
        assert scores["clip_image_spread"] == pytest.approx(float(data["feats"]["clip_image"].std(dim=0).mean()))
        assert scores["composite_score"] is not None and not scores.failures
    finally:
        unregister_metric("clip_image_spread")
    with pytest.raises(MetricError, match="missing"):
        Scorer(metrics=("clip_score", "composite_score"), backbones=RANDOM).score({}, None, strict=True)
    bad = Scorer(metrics=("clip_score", "composite_score"), backbones=RANDOM).score({}, None)
    assert bad["composite_score"] is None and isinstance(bad.failures["composite_score"].error, str)
    # a broken feature (NaN embeddings) fails the metric and the composite: no number is made up
    nan = Scorer(metrics=("clip_score", "composite_score"), backbones=RANDOM).score(
        {**data["feats"], "clip_text": data["feats"]["clip_text"] * float("nan")}, None)
    assert nan["clip_score"] is None and "NaN" in nan.failures["clip_score"].error
    assert nan["composite_score"] is None and "clip_score" in nan.failures["composite_score"].error


def test_scores_carry_bootstrap_intervals(data: dict[str, Any]) -> None:
    scorer: Scorer = data["scorer"]
    scores = scorer.score(data["feats"], data["ref"], seed=7, strict=True)
    assert set(scores.intervals) == {"clip_score", "lpips", "inception_score", "fid", "kid", "composite_score"}
    for name, (lo, hi) in scores.intervals.items():
        assert lo <= scores[name] <= hi, (name, lo, scores[name], hi)
    assert scorer.score(data["feats"], data["ref"], seed=7).intervals == scores.intervals  # seeded
    quiet = Scorer(backbones=RANDOM, metric_options=OPTS, intervals=False)
    assert quiet.score(data["feats"], data["ref"], seed=7).intervals == {}
