"""bestckpt.integrations.hunyuandit without DeepSpeed processes: tag names, weight files, the rank-0 registrar,
and the End2End adapter's lazy import and argument mapping (the End2End calls themselves are NOT RUN here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bestckpt.errors import SamplerError
from bestckpt.evaluation.sampler import SamplerSettings
from bestckpt.integrations import hunyuandit
from bestckpt.integrations.hunyuandit import TagRegistrar, load_tag_weights, model_states_file, tag_kind
from bestckpt.integrations.hunyuandit_sampler import import_end2end, predict_kwargs, to_uint8_images
from bestckpt.integrations.loop import TrainingEvaluation
from bestckpt.tracking.layout import COMPLETE_MARKER


def test_tag_kinds() -> None:
    assert tag_kind("0001000.pt") == "step" and tag_kind("12345678.pt") == "step"
    assert tag_kind("e0002.pt") == "epoch" and tag_kind("e12345.pt") == "epoch"
    assert tag_kind("latest.pt") == tag_kind("final.pt") == "untouched"
    assert tag_kind("latest") is None and tag_kind("best.pt") is None and tag_kind("e12.pt") is None


def test_weights_of_a_zero2_tag(tmp_path: Path) -> None:
    tag = tmp_path / "0000010.pt"
    tag.mkdir()
    with pytest.raises(FileNotFoundError, match="zero_pp_rank_0_mp_rank_00_model_states.pt"):
        model_states_file(tag)
    module, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.save({"module": module, "ema": ema, "steps": 10, "epoch": 0}, tag / "mp_rank_00_model_states.pt")
    state, weights = load_tag_weights(tag)
    assert weights == "ema" and torch.equal(state["w"], ema["w"])
    state, weights = load_tag_weights(tag, prefer_ema=False)
    assert weights == "online" and torch.equal(state["w"], module["w"])


def _tag(root: Path, name: str) -> str:
    (root / name).mkdir()
    return str(root / name)


def test_registrar_registers_step_and_epoch_tags_on_rank_0(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    reg = TagRegistrar(TrainingEvaluation(ckpt, None, "unused:factory", mode="off"), ckpt)
    # a step tag and latest.pt saved by one call: the step tag only, marked complete
    assert reg.tags_saved([(True, _tag(ckpt, "0000004.pt")), (True, _tag(ckpt, "latest.pt"))], 4, 0) == ["0000004.pt"]
    assert (ckpt / "0000004.pt" / COMPLETE_MARKER).is_file() and not (ckpt / "latest.pt" / COMPLETE_MARKER).exists()
    # an epoch tag with its training step; the same step's second tag is left alone; final.pt too
    assert reg.tags_saved([(True, _tag(ckpt, "e0000.pt"))], 6, 0) == ["e0000.pt"]
    assert reg.tags_saved([(True, _tag(ckpt, "0000008.pt"))], 8, 1) == ["0000008.pt"]
    assert reg.tags_saved([(True, _tag(ckpt, "e0001.pt"))], 8, 1) == []
    assert reg.tags_saved([(True, _tag(ckpt, "final.pt")), (False, "")], 9, 1) == []
    recs = {r.step: r.path for r in reg.evaluation.tracker.records}
    assert recs == {4: "0000004.pt", 6: "e0000.pt", 8: "0000008.pt"}
    assert len(reg.blocked_s) == 3  # one entry per call that handed a checkpoint over
    with pytest.raises(ValueError, match="0000012.pt"):
        reg.tags_saved([(True, _tag(ckpt, "0000011.pt"))], 12, 1)
    reg.close()


def test_module_calls_follow_the_rank_rule(tmp_path: Path) -> None:
    assert hunyuandit.start(tmp_path, 1, None, "unused:factory") is None
    assert hunyuandit.tags_saved(1, [(True, str(tmp_path / "0000004.pt"))], 4, 0) == []  # other ranks: nothing
    with pytest.raises(RuntimeError, match="start"):
        hunyuandit.tags_saved(0, [], 4, 0)
    hunyuandit.close(1)


def test_end2end_arguments() -> None:
    settings = SamplerSettings(num_steps=25, guidance_scale=6.0, image_size=1024,
                               extra={"negative_prompt": "blurry", "sampler": "ddim", "ignored": 1})
    assert predict_kwargs("a cat", 1234, settings) == dict(
        user_prompt="a cat", seed=1234, height=1024, width=1024, infer_steps=25, guidance_scale=6.0, batch_size=1,
        negative_prompt="blurry", sampler="ddim")
    wide = SamplerSettings(image_size=768, extra={"width": 1280})
    assert (predict_kwargs("x", 7, wide)["height"], predict_kwargs("x", 7, wide)["width"]) == (768, 1280)
    with pytest.raises(SamplerError, match="random seed"):
        predict_kwargs("a cat", 0, settings)  # End2End.predict would draw a random seed


def test_end2end_images_to_uint8() -> None:
    from PIL import Image

    images = [Image.new("RGB", (4, 3), (10, 20, 30)), Image.new("L", (4, 3), 200)]
    out = to_uint8_images(images)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 3, 4)
    assert out[0, :, 0, 0].tolist() == [10, 20, 30] and out[1, :, 0, 0].tolist() == [200, 200, 200]


@pytest.mark.skipif(importlib.util.find_spec("hydit") is not None, reason="hydit is installed")
def test_end2end_missing_hydit_names_the_install_step() -> None:
    with pytest.raises(SamplerError, match="git clone https://github.com/Tencent/HunyuanDiT"):
        import_end2end()
