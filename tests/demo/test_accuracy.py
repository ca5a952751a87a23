"""Attribute accuracy of demo images, by the demo classifier and by the nearest exact render (no network)."""
from __future__ import annotations

import pytest
import torch

from bestckpt.demo.accuracy import ALL, accuracy, attribute_targets, format_accuracy, nearest_render_attributes, prompt_accuracy
from bestckpt.demo.data import eval_prompts, render


def test_accuracy_counts_each_attribute_and_all_five_together() -> None:
    target = torch.tensor([[0, 1, 2, 3, 1], [1, 0, 4, 8, 2]])
    predicted = target.clone()
    predicted[1, 2] = 0  # second image: wrong shape only
    acc = accuracy(predicted, target)
    assert acc["shape"] == 0.5 and acc[ALL] == 0.5
    assert acc["size"] == acc["color"] == acc["position"] == acc["background"] == 1.0
    assert format_accuracy(acc).startswith("all 0.50 (size 1.00, color 1.00, shape 0.50")
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        accuracy(predicted[:, :4], target[:, :4])
    with pytest.raises(ValueError, match="zero images"):
        accuracy(predicted[:0], target[:0])


def test_exact_renders_are_read_right_by_both_measures() -> None:
    attrs = [a for _, a in eval_prompts(24, seed=0)]
    images = torch.stack([render(a) for a in attrs])
    assert torch.equal(nearest_render_attributes(images), attribute_targets(attrs))
    both = prompt_accuracy(images, attrs)
    assert both["nearest_render"][ALL] == 1.0
    assert both["classifier"][ALL] >= 0.9  # the classifier is a network: near, not exactly, perfect


def test_a_wrong_shape_is_counted_wrong_by_both_measures() -> None:
    attrs = [a for _, a in eval_prompts(12, seed=1)]
    drawn = [{**a, "shape": "cross" if a["shape"] != "cross" else "circle"} for a in attrs]
    both = prompt_accuracy(torch.stack([render(a) for a in drawn]), attrs)
    for measure in both.values():
        assert measure["shape"] <= 0.1 and measure[ALL] <= 0.1 and measure["position"] >= 0.9


def test_spearman_ranks_with_ties_and_refuses_to_invent() -> None:
    from bestckpt.demo.accuracy import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # NaN: constant input
