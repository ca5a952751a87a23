"""Table-driven tests of the pure retention policies (no disk)."""
from __future__ import annotations

import math

import pytest

from bestckpt.tracking import policies as P
from bestckpt.tracking.policies import Candidate as C


def ev(step: int, score: float) -> C:
    return C(step, f"{step:07d}.pt", "evaluated", score)


def st(step: int, status: str) -> C:
    return C(step, f"{step:07d}.pt", status, None)


RUN = [ev(1000, 0.5), ev(2000, 0.7), ev(3000, 0.6), ev(4000, 0.7), st(5000, "failed"), ev(6000, 0.55),
       st(7000, "pending"), st(8000, "saved")]

CASES = [
    # (id, policy, candidates, kept steps)
    ("topk-higher", P.TopK(2, True), RUN, {2000, 4000}),  # tie 0.7: both in; order checked below
    ("topk-lower", P.TopK(2, False), RUN, {1000, 6000}),
    ("topk-all", P.TopK(-1, True), RUN, {1000, 2000, 3000, 4000, 6000}),
    ("topk-tie-earlier-wins", P.TopK(1, True), RUN, {2000}),
    ("topk-ignores-failed-pending-saved", P.TopK(10, True), [st(1, "failed"), st(2, "pending"), st(3, "saved")], set()),
    ("topk-ignores-nonfinite", P.TopK(3, True), [ev(1, math.nan), ev(2, math.inf), ev(3, -math.inf), ev(4, 0.1)], {4}),
    ("topk-empty", P.TopK(3, True), [], set()),
    ("latest-1", P.LatestN(1), RUN, {8000}),
    ("latest-3", P.LatestN(3), RUN, {6000, 7000, 8000}),
    ("latest-out-of-order", P.LatestN(1), [ev(3000, 0.1), ev(1000, 0.2)], {3000}),
    ("latest-by-save-order", P.LatestN(1), [C(2000, "a", "saved", seq=2), C(0, "b", "saved", seq=3)], {0}),
    ("latest-2-by-save-order", P.LatestN(2), [C(10**12, "a", "saved", seq=1), C(100, "b", "saved", seq=2),
                                             C(200, "c", "saved", seq=3)], {100, 200}),
    ("latest-seq-0-by-step", P.LatestN(1), [C(3000, "a", "saved"), C(1000, "b", "saved")], {3000}),
    ("every-2000", P.EveryNSteps(2000), RUN, {2000, 4000, 6000, 8000}),
    ("every-disabled", P.EveryNSteps(None), RUN, set()),
    ("every-0-disabled", P.EveryNSteps(0), RUN, set()),
    ("pinned", P.Pinned((3000, 9999)), RUN, {3000}),
    ("pending", P.PendingEvaluation(), RUN, {7000}),
]


@pytest.mark.parametrize("name,policy,cands,expected", CASES, ids=[c[0] for c in CASES])
def test_policy_keeps(name, policy, cands, expected):
    kept = policy.keep(cands)
    assert set(kept) == expected
    assert all(isinstance(r, str) and r for r in kept.values())


@pytest.mark.parametrize(
    "higher,cands,expected_order",
    [
        (True, [ev(1, 0.3), ev(2, 0.9), ev(3, 0.5)], [2, 3, 1]),
        (False, [ev(1, 0.3), ev(2, 0.9), ev(3, 0.5)], [1, 3, 2]),
        (True, [ev(5, 0.5), ev(2, 0.5), ev(9, 0.5)], [2, 5, 9]),  # ties: earlier step ahead
        (False, [ev(5, 0.5), ev(2, 0.5), ev(9, 0.1)], [9, 2, 5]),
        (True, [ev(1, math.nan), st(2, "failed"), ev(3, 0.0)], [3]),
    ],
)
def test_rank_direction_and_ties(higher, cands, expected_order):
    assert [c.step for c in P.rank(cands, higher)] == expected_order


@pytest.mark.parametrize(
    "higher,margin,scores,best",
    [
        (True, 0.0, [(1, 0.5), (2, 0.6), (3, 0.55)], 2),
        (True, 0.0, [(1, 0.6), (2, 0.6)], 1),  # tie: earlier stays
        (True, 0.05, [(1, 0.60), (2, 0.64), (3, 0.66)], 3),  # 0.64 is not enough, 0.66 is
        (True, 0.05, [(1, 0.60), (2, 0.65)], 1),  # exactly the margin is not more than it
        (False, 0.0, [(1, 30.0), (2, 20.0), (3, 25.0)], 2),
        (False, 1.0, [(1, 30.0), (2, 29.5), (3, 28.9)], 3),
        (True, 0.0, [], None),
        (True, 0.0, [(1, math.nan)], None),
    ],
)
def test_select_best(higher, margin, scores, best):
    got = P.select_best([ev(s, v) for s, v in scores], higher, margin)
    assert (got.step if got else None) == best


def test_select_best_out_of_order_replays_in_step_order():
    # step 3 evaluated first, then step 1 arrives late; with a margin the order is training order.
    cands = [ev(3, 0.62), ev(1, 0.60)]
    assert P.select_best(cands, True, 0.05).step == 1
    assert P.select_best(cands, True, 0.0).step == 3


def test_topk_reasons_name_rank_and_metric():
    kept = P.TopK(2, True, "composite_score").keep(RUN)
    assert kept[2000].startswith("top-2 #1 (composite_score=0.7")
    assert kept[4000].startswith("top-2 #2")


def test_anyof_reasons_and_deletions():
    policy = P.AnyOf([P.TopK(1, True, "m"), P.LatestN(1), P.Pinned((1000,), reason="pinned")])
    decisions = {d.step: d for d in policy.decide(RUN)}
    assert [d.step for d in policy.decide(RUN)] == sorted(c.step for c in RUN)
    assert decisions[2000].keep and decisions[2000].reasons == ("top-1 #1 (m=0.7)",)
    assert decisions[8000].keep and decisions[8000].reasons == ("latest",)
    assert decisions[1000].keep and decisions[1000].reasons == ("pinned",)
    assert not decisions[4000].keep and decisions[4000].reasons == ("outside the top-k",)
    assert not decisions[5000].keep and "failed" in decisions[5000].reasons[0]
    assert not decisions[7000].keep  # pending is not protected by this composition
    assert decisions[8000].reasons != ("not evaluated (saved only)",)
    assert not decisions[6000].keep


def test_anyof_multiple_reasons_accumulate():
    policy = P.AnyOf([P.TopK(1, True), P.EveryNSteps(2000), P.LatestN(1)])
    d = {d.step: d for d in policy.decide([ev(2000, 0.9)])}[2000]
    assert d.keep and len(d.reasons) == 3


@pytest.mark.parametrize(
    "kwargs,kept",
    [
        (dict(save_top_k=1), {2000, 7000, 8000}),  # top-1, pending, latest
        (dict(save_top_k=2, keep_latest=3), {2000, 4000, 6000, 7000, 8000}),
        (dict(save_top_k=1, keep_every_n_steps=3000), {2000, 3000, 6000, 7000, 8000}),
        (dict(save_top_k=1, pinned_steps=(1000,)), {1000, 2000, 7000, 8000}),
        (dict(save_top_k=1, keep_latest=0), {2000, 7000, 8000}),  # keep-latest can never drop below 1
        (dict(save_top_k=1, best_step=3000), {2000, 3000, 7000, 8000}),
        (dict(save_top_k=1, protected={5000: "named by DeepSpeed 'latest'"}), {2000, 5000, 7000, 8000}),
        (dict(save_top_k=2, higher_is_better=False), {1000, 6000, 7000, 8000}),
    ],
)
def test_retention_policy_composition(kwargs, kept):
    kwargs.setdefault("higher_is_better", True)
    decisions = P.retention_policy(**kwargs).decide(RUN)
    assert {d.step for d in decisions if d.keep} == kept


def test_retention_never_empty_keeps_newest_when_all_failed():
    cands = [st(1, "failed"), st(2, "failed"), st(3, "saved")]
    decisions = P.retention_policy(save_top_k=3, higher_is_better=True).decide(cands)
    assert [d.step for d in decisions if d.keep] == [3]


def test_candidate_rankable():
    assert ev(1, 0.2).rankable and not ev(1, math.nan).rankable and not st(1, "pending").rankable
