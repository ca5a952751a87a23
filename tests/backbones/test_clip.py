"""CLIP: score parity with torchmetrics' functional clip_score on the same (tiny random) model, long-prompt
truncation with a warning, batch invariance, and loading an OpenAI-format file through open_clip."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bestckpt.backbones import get_backbone
from bestckpt.backbones.clip import HFClipBackbone, OpenClipBackbone
from bestckpt.backbones.weights import WeightsError
from bestckpt.metrics import clip_cosines, clip_score
from bestckpt.testing.networks import TensorFeatureCLIP as _TensorOutputs  # noqa: E402  torchmetrics-compatible wrapper
from bestckpt.testing.networks import (
    random_open_clip,
    spec_for_file,
    write_tiny_hf_clip,
)

PROMPTS = ["a red circle on a blue background", "two green squares", "a small yellow triangle"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (3, 3, 40, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_clip_score_matches_torchmetrics(tiny_dir: Path, images: torch.Tensor) -> None:
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.functional.multimodal.clip_score import (
        clip_score as tm_clip_score,
    )
    from transformers import CLIPModel, CLIPProcessor

    def load() -> tuple[torch.nn.Module, CLIPProcessor]:
        return _TensorOutputs(CLIPModel.from_pretrained(tiny_dir)), CLIPProcessor.from_pretrained(tiny_dir)

    backbone = get_backbone("clip", f"hf:{tiny_dir}")
    img, txt = backbone.encode_images(images), backbone.encode_texts(PROMPTS)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    model, processor = load()
    per_sample, _ = _clip_score_update(list(images), PROMPTS, model, processor)
    assert torch.allclose(torch.from_numpy(clip_cosines(img, txt)).float(), per_sample.detach() / 100, atol=1e-5)
    tm = float(tm_clip_score(list(images), PROMPTS, load).detach())
    assert clip_score(img, txt, "torchmetrics") == pytest.approx(tm, abs=1e-3)  # 1e-5 on the cosine scale

    backbone.batch_size = 1
    assert torch.allclose(backbone.encode_images(images), img, atol=1e-5)
    assert torch.allclose(backbone.encode_texts(PROMPTS), txt, atol=1e-5)


def test_long_prompts_truncate_with_warning(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    backbone = get_backbone("clip", f"hf:{tiny_dir}")
    long_prompt = "a very detailed painting of " + "many colourful shapes and " * 30
    with caplog.at_level(logging.WARNING, logger="bestckpt.backbones.clip"):
        emb = backbone.encode_texts([long_prompt, PROMPTS[0]])
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
    assert "truncated to the 77-token context" in caplog.text


def test_open_clip_vit_b_32_from_openai_format_file(tmp_path: Path, images: torch.Tensor,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The default backbone's loader (open_clip's OpenAI loader -> QuickGELU ViT-B/32) on a random weight file."""
    model = random_open_clip("ViT-B-32-quickgelu", seed=0)
    path = tmp_path / "ViT-B-32.pt"
    torch.save(model.state_dict(), path)
    backbone = OpenClipBackbone.from_openai_file(path, "clip-vit-b-32", spec=spec_for_file(path))
    direct = OpenClipBackbone(model, "clip-vit-b-32-random-test", torch.device("cpu"), "seed0")
    a, b = backbone.encode_images(images[:2]), direct.encode_images(images[:2])
    # same weights; open_clip's OpenAI builder differs in fp32 op order (≈1e-4), not in the network
    assert a.shape == (2, 512) and torch.allclose(a, b, atol=1e-3)
    assert float((a * b).sum(dim=1).min()) > 0.99999
    with caplog.at_level(logging.WARNING, logger="bestckpt.backbones.clip"):
        t = backbone.encode_texts(["word " * 100, "a cat"])
    assert t.shape == (2, 512) and "truncated" in caplog.text


def test_missing_clip_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BESTCKPT_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsError, match=r"ViT-B-32\.pt.*40d365715913c9da.*openaipublic"):
        get_backbone("clip", weights_dir=tmp_path / "none")
    with pytest.raises(WeightsError, match="not found locally"):
        HFClipBackbone.from_pretrained(str(tmp_path / "no-such-model"))
