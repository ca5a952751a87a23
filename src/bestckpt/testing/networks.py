"""Random-initialised networks of the real backbone architectures, for tests only.

Everything here is **meaningless for real evaluation**: the weights are seeded random numbers, so the features
carry no perceptual or semantic information. They exist so that tests can exercise the exact architectures, the
weight-loading code and parity with the reference libraries without downloading the real weights (which cannot
be downloaded on the development machines). Names of the corresponding registered backbones end in
``-random-test``.

Initialisation: convolutions and linear layers get He-normal weights (std √(2/fan_in)) from a seeded
``torch.Generator`` so activations neither vanish nor explode through deep stacks; BatchNorm layers are near
identity with small random biases. No global RNG state is touched.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bestckpt.backbones.weights import INCEPTION_FID, WeightSpec
from bestckpt.fsio import sha256_file

if TYPE_CHECKING:
    from bestckpt.backbones.inception import FIDInceptionV3

__all__ = [
    "init_random_", "random_fid_inception", "random_lpips_parts", "random_open_clip",
    "write_random_inception_weights", "write_random_lpips_weights", "write_tiny_hf_clip", "write_random_hf_clip", "spec_for_file",
    "TensorFeatureCLIP",
    "inception_random_test", "lpips_alex_random_test", "lpips_vgg_random_test", "clip_vit_b_32_random_test",
    "clip_tiny_random_test",
]


def init_random_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded He-normal init of conv/linear weights, near-identity BatchNorm; returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.01, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.normal_(0.0, 0.1, generator=gen)
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats=True
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return module


def random_fid_inception(seed: int = 0) -> FIDInceptionV3:
    """FIDInceptionV3 with seeded random weights (meaningless; tests only)."""
    from bestckpt.backbones.inception import FIDInceptionV3

    net = FIDInceptionV3()
    init_random_(net, seed)
    return net.eval()


def random_lpips_parts(net: str = "alex", seed: int = 0) -> tuple[nn.Sequential, list[torch.Tensor]]:
    """(torchvision ``.features`` with random weights, random non-negative lin weights) for LPIPS ``net``."""
    from bestckpt.backbones.lpips import LPIPS_NETS, build_features

    feats = build_features(net)
    init_random_(feats, seed)
    feats.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    lins = [torch.rand(c, generator=gen) * 0.2 for c in LPIPS_NETS[net][2]]
    return feats, lins


def random_open_clip(model_name: str = "ViT-B-32-quickgelu", seed: int = 0) -> nn.Module:
    """An open_clip model of the real architecture with seeded random weights (global RNG restored after)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None)
    return model.eval()


def write_random_inception_weights(directory: str | Path, seed: int = 0,
                                   filename: str = INCEPTION_FID.filename) -> Path:
    """Save a random FID Inception state dict (pytorch-fid key names) as ``directory/filename``."""
    path = Path(directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_fid_inception(seed).state_dict(), path)
    return path


def write_random_lpips_weights(directory: str | Path, net: str = "alex", seed: int = 0) -> tuple[Path, Path]:
    """Save torchvision-style ``features.*`` weights under the standard file name and ``lpips_v0.1_{net}.pth``."""
    from bestckpt.backbones.lpips import LPIPS_NETS

    feats, lins = random_lpips_parts(net, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone = directory / LPIPS_NETS[net][0].filename
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, backbone)
    lin = directory / f"lpips_v0.1_{net}.pth"
    torch.save({f"lin{i}.model.1.weight": w.view(1, -1, 1, 1) for i, w in enumerate(lins)}, lin)
    return backbone, lin


def spec_for_file(path: str | Path, template: WeightSpec | None = None) -> WeightSpec:
    """A WeightSpec that accepts exactly this file (its own sha256) — for loading tests with random weights."""
    path = Path(path)
    return WeightSpec(path.name, sha256_file(path), None, 0, (), f"test file ({template.description if template else ''})")


def _openai_vocab() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's BPE vocabulary and merges, rebuilt from the file open_clip ships."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [line for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tiny_hf_clip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random Hugging Face CLIP (2 layers, width 32) with the real OpenAI tokenizer; returns the folder."""
    return write_random_hf_clip(directory, seed, architecture="tiny", image_size=image_size)


def write_random_hf_clip(directory: str | Path, seed: int = 0, architecture: str = "tiny",
                         image_size: int | None = None) -> Path:
    """Save a random Hugging Face CLIP with the real OpenAI tokenizer and an OpenAI-style image processor (short side
    → ``image_size`` bicubic, centre crop) into ``directory``. ``architecture`` "tiny" (2 layers, width 32, 32 px) or
    "vit-b-32" (the exact ViT-B/32 shapes of openai/clip-vit-base-patch32, 224 px)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _openai_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    if architecture == "tiny":
        image_size = image_size or 32
        config = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, **special),
            vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2),
            projection_dim=16,
        )
    elif architecture == "vit-b-32":
        image_size = image_size or 224
        config = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", **special),
            vision_config=dict(image_size=image_size, patch_size=32, hidden_size=768, intermediate_size=3072,
                               num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
            projection_dim=512,
        )
    else:
        raise ValueError(f"unknown architecture {architecture!r}; use 'tiny' or 'vit-b-32'")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


class TensorFeatureCLIP(nn.Module):
    """Wraps a Hugging Face CLIP model so ``get_image_features``/``get_text_features`` return tensors.

    torchmetrics 1.9's ``clip_score`` expects tensors; transformers 5 returns output objects. The wrapper
    only unwraps them (``pooler_output`` is the projected embedding); model and processor are untouched.
    Used by the CLIP parity test and ``bench/bench_eval.py`` to call torchmetrics with the same model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a Hugging Face CLIP model: methods looked up at run time
        self.config = model.config

    def get_image_features(self, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


# ------------------------------------------------------------------------------------------------
# Backbone factories of the ``*-random-test`` names (declared as entry points in pyproject.toml).
def inception_random_test(weights_dir: Path | None, device: torch.device):  # -> InceptionBackbone
    """Entry point ``inception-2015-12-05-random-test``: the FID Inception with seeded random weights."""
    from bestckpt.backbones.inception import InceptionBackbone

    return InceptionBackbone(random_fid_inception(seed=0), "inception-2015-12-05-random-test", device, "seed0")


def _lpips_random(net: str):
    def factory(weights_dir: Path | None, device: torch.device):  # -> LpipsBackbone
        from bestckpt.backbones.lpips import LpipsBackbone

        feats, lins = random_lpips_parts(net, seed=0)
        return LpipsBackbone(net, feats, lins, f"lpips-{net}-random-test", device)
    factory.__name__ = f"lpips_{net}_random_test"
    return factory


lpips_alex_random_test = _lpips_random("alex")
lpips_vgg_random_test = _lpips_random("vgg")


def clip_vit_b_32_random_test(weights_dir: Path | None, device: torch.device):  # -> OpenClipBackbone
    """Entry point ``clip-vit-b-32-random-test``: open_clip ViT-B/32 with seeded random weights."""
    from bestckpt.backbones.clip import OpenClipBackbone

    return OpenClipBackbone(random_open_clip(seed=0), "clip-vit-b-32-random-test", device, "seed0")


def clip_tiny_random_test(weights_dir: Path | None, device: torch.device):  # -> HFClipBackbone
    """Entry point ``clip-tiny-random-test``: a tiny random Hugging Face CLIP (built in a temporary folder)."""
    import os
    import tempfile

    from bestckpt.backbones.clip import HFClipBackbone

    with tempfile.TemporaryDirectory(prefix="bestckpt-tiny-clip-") as tmp:
        folder = write_tiny_hf_clip(Path(tmp) / "clip", seed=0)
        return HFClipBackbone.from_pretrained(os.fspath(folder), device, name="clip-tiny-random-test")
