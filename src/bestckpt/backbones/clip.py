"""CLIP image/text encoders: OpenAI ViT-B/32 by default (the guide's choice), other models selectable.

Names:
- ``clip-vit-b-32`` / ``clip-vit-l-14``: OpenAI weights (``ViT-B-32.pt`` / ``ViT-L-14.pt`` from ``~/.cache/clip``, the
  weights folders or ``$TORCH_HOME/hub/checkpoints``; checksum-verified) loaded with open_clip's OpenAI loader, which
  builds the QuickGELU variant those weights need (a GELU model would silently change the embeddings). Images are
  preprocessed with open_clip's eval transform (bicubic resize of the short side to 224, centre crop, CLIP mean/std)
  on PIL images, exactly as open_clip / OpenAI CLIP do.
- ``hf:<repo id or local folder>``: a Hugging Face ``CLIPModel`` + ``CLIPProcessor`` from the local Hugging Face cache
  or a folder (``local_files_only``; no download) — e.g. ``hf:openai/clip-vit-base-patch32``; preprocessing is the
  processor's own (as torchmetrics' ``clip_score``).
- ``clip-vit-b-32-random-test``, ``clip-tiny-random-test``: random-initialised, for tests only.

Texts longer than the 77-token context are truncated (keeping the end-of-text token) with a warning naming the
prompt — never an exception, never a score of 0.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .images import check_uint8_images
from .weights import (
    CLIP_VIT_B_32,
    CLIP_VIT_L_14,
    WeightsError,
    WeightSpec,
    resolve_weights,
    verify_weights,
)

__all__ = ["OpenClipBackbone", "HFClipBackbone", "hf_clip_factory", "clip_vit_b_32", "clip_vit_l_14", "CONTEXT_LENGTH"]

logger = logging.getLogger(__name__)
CONTEXT_LENGTH = 77


def _embed_in_batches(n: int, batch_size: int, embed: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """L2-normalised float32 embeddings [n, E] on the CPU, ``embed(items)`` run on ``batch_size`` items at a time."""
    out = [torch.nn.functional.normalize(embed(slice(s, s + batch_size)).float(), dim=-1).cpu()
           for s in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def _warn_truncated(texts: list[str], lengths: list[int], limit: int) -> None:
    for text, n in zip(texts, lengths):
        if n > limit:
            logger.warning("CLIP prompt of %d tokens truncated to the %d-token context: %r", n, limit,
                           text if len(text) < 120 else text[:117] + "...")


class OpenClipBackbone:
    """open_clip model: ``encode_images(uint8 [N,3,H,W]) -> [N, E]``, ``encode_texts(list[str]) -> [N, E]``."""

    def __init__(self, model: torch.nn.Module, name: str, device: torch.device, weights_id: str,
                 batch_size: int = 64) -> None:
        import open_clip

        self.model: Any = model.to(device).eval().requires_grad_(False)  # open_clip model: methods looked up at run time
        size = getattr(model.visual, "image_size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.preprocess = open_clip.image_transform(size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                                    std=open_clip.OPENAI_DATASET_STD)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.cache_id = f"{name}-{weights_id}"

    @classmethod
    def from_openai_file(cls, path: str | Path, name: str, device: Any = "cpu",
                         spec: WeightSpec | None = None) -> OpenClipBackbone:
        from open_clip.openai import load_openai_model

        if spec is not None:
            verify_weights(Path(path), spec)
        model = load_openai_model(str(path), precision="fp32", device="cpu")
        return cls(model, name, torch.device(device), spec.sha256[:16] if spec and spec.sha256 else Path(path).name)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        check_uint8_images(images)

        def embed(items: slice) -> torch.Tensor:
            chunk = images[items].permute(0, 2, 3, 1).cpu().numpy()
            x = torch.stack([self.preprocess(Image.fromarray(im)) for im in chunk]).to(self.device)
            return self.model.encode_image(x)

        return _embed_in_batches(images.shape[0], self.batch_size, embed)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        texts = list(texts)
        lengths = [len(self.tokenizer.encode(t)) + 2 for t in texts]  # + start/end tokens
        _warn_truncated(texts, lengths, CONTEXT_LENGTH)

        def embed(items: slice) -> torch.Tensor:
            tokens = self.tokenizer(texts[items]).to(self.device)  # truncates, keeps the end-of-text token
            return self.model.encode_text(tokens)

        return _embed_in_batches(len(texts), self.batch_size, embed)


def _as_tensor(features: Any) -> torch.Tensor:
    # transformers 5 may return a model output object instead of a tensor
    if isinstance(features, torch.Tensor):
        return features
    pooled = getattr(features, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(features).__name__}")
    return pooled


class HFClipBackbone:
    """Hugging Face ``CLIPModel`` + ``CLIPProcessor`` with the same interface as :class:`OpenClipBackbone`."""

    def __init__(self, model: Any, processor: Any, name: str, device: torch.device, batch_size: int = 64) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.context_length = int(getattr(model.config.text_config, "max_position_embeddings", CONTEXT_LENGTH))
        self.cache_id = name

    @classmethod
    def from_pretrained(cls, repo_or_dir: str, device: Any = "cpu", name: str | None = None) -> HFClipBackbone:
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(repo_or_dir, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(repo_or_dir, local_files_only=True)
        except OSError as exc:
            raise WeightsError(
                f"Hugging Face CLIP model {repo_or_dir!r} not found locally ({exc}). To fix: download it once with "
                f"`huggingface-cli download {repo_or_dir}` (goes to the Hugging Face cache, $HF_HOME) or pass a "
                f"local folder as hf:/path/to/folder") from exc
        return cls(model, processor, name or f"hf:{repo_or_dir}", torch.device(device))

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)

        def embed(items: slice) -> torch.Tensor:
            chunk = [im for im in images[items].cpu()]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            return _as_tensor(self.model.get_image_features(pixel_values=pixels))

        return _embed_in_batches(images.shape[0], self.batch_size, embed)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        texts = list(texts)
        tok = self.processor.tokenizer
        _warn_truncated(texts, [len(tok(t)["input_ids"]) for t in texts], self.context_length)

        def embed(items: slice) -> torch.Tensor:
            enc = tok(texts[items], padding=True, truncation=True, max_length=self.context_length, return_tensors="pt")
            return _as_tensor(self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                           attention_mask=enc["attention_mask"].to(self.device)))

        return _embed_in_batches(len(texts), self.batch_size, embed)


def hf_clip_factory(repo_or_dir: str):
    def factory(weights_dir: Path | None, device: torch.device) -> HFClipBackbone:
        return HFClipBackbone.from_pretrained(repo_or_dir, device)
    return factory


def _openai(spec: WeightSpec, name: str):
    def factory(weights_dir: Path | None, device: torch.device) -> OpenClipBackbone:
        return OpenClipBackbone.from_openai_file(resolve_weights(spec, weights_dir), name, device)
    return factory


#: Entry points ``clip-vit-b-32`` and ``clip-vit-l-14`` (OpenAI weights through open_clip).
clip_vit_b_32 = _openai(CLIP_VIT_B_32, "clip-vit-b-32")
clip_vit_l_14 = _openai(CLIP_VIT_L_14, "clip-vit-l-14")
