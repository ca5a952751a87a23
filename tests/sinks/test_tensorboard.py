"""TensorBoard sink: real event files read back with tensorboard's EventAccumulator."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard", reason="TensorBoard sink needs the tensorboard package")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bestckpt.sinks.tensorboard import IS_BEST_TAG, SAMPLES_TAG, TAGS, TensorBoardSink  # noqa: E402


def _read(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_every_tag_at_the_checkpoint_step(tmp_path: Path) -> None:
    scores1 = {"clip_score": 0.31, "lpips": 0.42, "inception_score": 2.5, "fid": 120.0, "kid": 0.05,
               "composite_score": 0.61}
    scores2 = {k: v * 0.5 for k, v in scores1.items()}
    with TensorBoardSink(tmp_path) as sink:
        written = sink.write(2000, scores1, is_best=True, images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
        sink.write(4000, scores2, is_best=False)
    assert set(written) == set(TAGS.values()) | {IS_BEST_TAG, SAMPLES_TAG}
    acc = _read(tmp_path)
    tags = acc.Tags()
    expected = {"Evaluation/CLIP_Score", "Evaluation/LPIPS", "Evaluation/Inception_Score", "Evaluation/FID",
                "Evaluation/KID", "Evaluation/Composite_Score", "Evaluation/IsBest"}
    assert expected <= set(tags["scalars"])
    for name, tag in TAGS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [2000, 4000]
        assert events[0].value == pytest.approx(scores1[name], rel=1e-6)
        assert events[1].value == pytest.approx(scores2[name], rel=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars(IS_BEST_TAG)] == [(2000, 1.0), (4000, 0.0)]
    images = acc.Images(SAMPLES_TAG)
    assert [e.step for e in images] == [2000] and images[0].width > 8


def test_failed_metrics_leave_a_gap_not_a_fake_value(tmp_path: Path) -> None:
    with TensorBoardSink(tmp_path) as sink:
        written = sink.write(10, {"clip_score": 0.3, "fid": None, "kid": float("nan")})
    assert written == ["Evaluation/CLIP_Score"]
    scalars = _read(tmp_path).Tags()["scalars"]
    assert "Evaluation/FID" not in scalars and "Evaluation/KID" not in scalars


def test_intervals_go_next_to_their_metric(tmp_path: Path) -> None:
    with TensorBoardSink(tmp_path) as sink:
        written = sink.write(5, {"fid": 120.0, "kid": None, "lpips": 0.4},
                             intervals={"fid": (110.0, 131.0), "kid": (0.0, 0.1), "lpips": (0.38, float("nan"))})
    assert written == ["Evaluation/FID", "Evaluation/FID_CI_low", "Evaluation/FID_CI_high", "Evaluation/LPIPS"]
    acc = _read(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("Evaluation/FID_CI_low")] == [(5, 110.0)]
    assert [(e.step, e.value) for e in acc.Scalars("Evaluation/FID_CI_high")] == [(5, 131.0)]
    assert "Evaluation/KID_CI_low" not in acc.Tags()["scalars"]  # no value, no interval


def test_attached_results_at_their_step_at_the_end(tmp_path: Path) -> None:
    """Results attached after scoring (``tracker.annotate``) reach TensorBoard at the run's end, at their step."""
    results = {"300": {"accuracy": {"classifier": {"color": 0.9, "all": 0.5}, "num_prompts": 12, "ok": True}}}
    with TensorBoardSink(tmp_path) as sink:
        sink.finish({"results": results}, None)
    acc = _read(tmp_path)
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got == {"Evaluation/accuracy/classifier/color": [(300, pytest.approx(0.9))],
                   "Evaluation/accuracy/classifier/all": [(300, 0.5)],
                   "Evaluation/accuracy/num_prompts": [(300, 12.0)]}  # a boolean is not a scalar
