"""The standard scorer and the test kit's custom scorer satisfy the runners' scorer contract."""
from __future__ import annotations

from pipeline_kit import KitScorer

from bestckpt.evaluation.contracts import ScorerLike
from bestckpt.evaluation.scorer import Scorer


def test_scorers_satisfy_the_contract() -> None:
    assert isinstance(Scorer(metrics=("clip_score",)), ScorerLike)
    assert isinstance(KitScorer(), ScorerLike)
    assert not isinstance(object(), ScorerLike)
