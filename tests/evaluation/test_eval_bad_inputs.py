"""Bad inputs: clear errors; a failed evaluation is recorded (never best), training goes on, nothing is lost."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pipeline_kit import KitScorer, TinySampler, _Broken, make_protocol, save_checkpoint

from bestckpt.evaluation.protocol import Protocol, ProtocolError
from bestckpt.runners import EvalSchedule, Evaluator, InlineRunner
from bestckpt.tracking.tracker import BestCheckpointTracker


def test_prompt_csv_with_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "prompts.csv").write_text("file,caption\na.png,a cat\n")
    (tmp_path / "protocol.json").write_text(json.dumps({"prompts_file": "prompts.csv"}))
    with pytest.raises(ProtocolError) as err:
        Protocol.from_file(tmp_path / "protocol.json")
    assert "['file', 'caption']" in str(err.value) and "['image_path', 'text_en']" in str(err.value)


def test_prompt_csv_with_missing_reference_images(tmp_path: Path) -> None:
    (tmp_path / "prompts.csv").write_text("image_path,text_en\nimgs/gone.png,a cat\nimgs/lost.jpg,a dog\n")
    (tmp_path / "protocol.json").write_text(json.dumps({"prompts_file": "prompts.csv"}))
    with pytest.raises(ProtocolError) as err:
        Protocol.from_file(tmp_path / "protocol.json")
    assert "gone.png" in str(err.value) and "lost.jpg" in str(err.value)


@pytest.mark.parametrize(
    "mode, needle",
    [
        ("float", "dtype torch.float32; expected torch.uint8"),
        ("shape", "shape (4, 1, 16, 16); expected [N, 3, H, W]"),
        ("count", "returned 3 images for 4 prompts"),
        ("size", "sampler images are 14x14; the protocol's image_size is 16x16"),
        ("raise", "RuntimeError: sampler exploded on purpose"),
        ("corrupt", "checkpoint"),
    ],
)
def test_bad_sampler_or_checkpoint_is_recorded_and_training_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, needle: str
) -> None:
    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True, save_top_k=1, keep_every_n_steps=0)
    good = Evaluator(protocol, TinySampler(), scorer=KitScorer(), dist=None, batch_size=4)
    bad_sampler = TinySampler() if mode == "corrupt" else _Broken(mode)
    bad = Evaluator(protocol, bad_sampler, scorer=KitScorer(), dist=None, batch_size=4)
    every = EvalSchedule(every_n_checkpoints=1)
    caplog.set_level(logging.INFO)

    InlineRunner(tracker, good, every).checkpoint_saved(100, save_checkpoint(ckpt_dir / "0000100.pt", 100))
    path = save_checkpoint(ckpt_dir / "0000200.pt", 200, seed=999)
    if mode == "corrupt":
        path.write_bytes(b"this is not a torch checkpoint")
    result = InlineRunner(tracker, bad, every).checkpoint_saved(200, path)  # must not raise
    assert not result.ok and needle in result.error
    if mode == "corrupt":
        assert "sampler failed on checkpoint" in result.error and "0000200.pt" in result.error
    InlineRunner(tracker, good, every).checkpoint_saved(300, save_checkpoint(ckpt_dir / "0000300.pt", 300))

    recs = {r.step: r for r in tracker.records}
    assert recs[200].status == "failed" and needle in recs[200].error
    assert recs[200].protocol_hash == protocol.hash
    assert recs[100].status == recs[300].status == "evaluated"
    assert tracker.best is not None and tracker.best.step in (100, 300)  # a failure never becomes best
    assert tracker.pending_steps() == []
    assert (ckpt_dir / "0000300.pt").exists()  # the newest (resume point) is kept
    assert "evaluation failed (recorded, training continues)" in caplog.text


def test_scorer_that_raises_is_recorded(tmp_path: Path) -> None:
    class BrokenScorer(KitScorer):
        def score(self, features, reference, seed=0):
            raise ValueError("covariance is singular")

    protocol = make_protocol(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=True)
    runner = InlineRunner(tracker, Evaluator(protocol, TinySampler(), scorer=BrokenScorer(), dist=None),
                          EvalSchedule(every_n_checkpoints=1))
    result = runner.checkpoint_saved(10, save_checkpoint(ckpt_dir / "0000010.pt", 10))
    assert result.error == "ValueError: covariance is singular"
    assert tracker.records[0].status == "failed" and tracker.best is None


def test_missing_checkpoint_file_is_a_clear_failure(tmp_path: Path) -> None:
    from bestckpt.evaluation.evaluate import evaluate_checkpoint

    protocol = make_protocol(tmp_path)
    result = evaluate_checkpoint(tmp_path / "0000100.pt", 100, protocol, TinySampler(), KitScorer(), None, dist=None)
    assert not result.ok and "does not exist" in result.error and "0000100.pt" in result.error
