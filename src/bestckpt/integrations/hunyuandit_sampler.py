"""A sampler on HunyuanDiT's own inference class, ``hydit.inference.End2End`` (a thin adapter).

NOT RUN in this project: ``hydit`` is not on PyPI and ``End2End`` loads multi-GB weights (CLIP text encoder,
mT5, the SDXL VAE, the DiT) that cannot be downloaded here. What is tested without ``hydit``: the lazy import
and its error (:func:`import_end2end`), the mapping of the protocol's settings and seeds onto
``End2End.predict`` (:func:`predict_kwargs`), and the image conversion (:func:`to_uint8_images`). The lines
that touch a real ``End2End`` (:meth:`End2EndSampler.__call__` loading weights into ``gen.model`` and calling
``gen.predict``; :func:`make_sampler`) are a documented adapter, never reported as tested.

Per image: ``End2End.predict(prompt, height, width, seed, infer_steps, guidance_scale, negative_prompt,
batch_size=1, ...)`` seeds one ``torch.Generator`` from ``seed`` (``hydit.utils.tools.set_seeds``), so one call
per (prompt, seed) makes each image depend on its own protocol seed only. ``predict`` treats ``seed == 0`` as
"draw a random seed": that seed is refused (a random image would make scores incomparable).

Weights: ``End2End`` loads ``--dit-weight`` once at construction; for every checkpoint this sampler loads the
tag's EMA (or module, consolidating ZeRO-3 shards) weights with
:func:`bestckpt.integrations.hunyuandit.load_tag_weights` into ``gen.model`` (``strict=True``, like
``End2End.load_torch_weights``). Spec: ``"bestckpt.integrations.hunyuandit_sampler:make_sampler"``, configured
by ``BESTCKPT_HYDIT_ARGS`` (the ``sample_t2i.py`` options, e.g. ``"--model-root ckpts --infer-mode torch
--no-enhance"``) and ``BESTCKPT_HYDIT_LOAD_KEY`` (``ema``, default, or ``module``).
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bestckpt.errors import SamplerError

__all__ = ["INSTALL_HINT", "End2EndSampler", "import_end2end", "make_sampler", "predict_kwargs", "to_uint8_images"]

#: how to make ``hydit`` importable (it is not on PyPI) and where its inference weights go
INSTALL_HINT = (
    "hydit is HunyuanDiT's package and is not on PyPI: `git clone https://github.com/Tencent/HunyuanDiT`, "
    "`pip install -r HunyuanDiT/requirements.txt` (plus `pip install 'bestckpt[hunyuandit]'`), put the clone on "
    "PYTHONPATH, and download the inference weights into its ckpts/ "
    "(`huggingface-cli download Tencent-Hunyuan/HunyuanDiT-v1.2 --local-dir ./ckpts`)"
)

#: ``settings.extra`` keys passed to ``End2End.predict`` as they are
PASSED_THROUGH = ("negative_prompt", "sampler", "src_size_cond", "use_style_cond")


def import_end2end() -> tuple[Any, Any]:
    """``(End2End, get_args)`` from ``hydit``, imported now; a :class:`SamplerError` naming the install step if absent."""
    try:
        from hydit.config import get_args  # type: ignore[import-not-found]
        from hydit.inference import End2End  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SamplerError(f"cannot import hydit.inference.End2End ({exc}). {INSTALL_HINT}") from exc
    return End2End, get_args


def predict_kwargs(prompt: str, seed: int, settings: Any) -> dict[str, Any]:
    """The keyword arguments of ``End2End.predict`` for one protocol image.

    ``settings`` (the protocol's :class:`~bestckpt.evaluation.sampler.SamplerSettings`): ``num_steps`` ->
    ``infer_steps``, ``guidance_scale``, ``image_size`` -> ``height`` = ``width`` (``extra["height"]``/
    ``extra["width"]`` for other shapes); ``extra`` keys in :data:`PASSED_THROUGH` as they are.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SamplerError(f"seed {seed!r} must be an int: End2End.predict refuses anything else")
    if seed == 0:
        raise SamplerError("End2End.predict draws a random seed when seed == 0, so this image could not be "
                           "reproduced; change the protocol's base seed so that no sample seed is 0")
    extra: Mapping[str, Any] = dict(getattr(settings, "extra", None) or {})
    size = int(settings.image_size)
    kwargs: dict[str, Any] = dict(
        user_prompt=prompt, seed=int(seed), height=int(extra.get("height", size)), width=int(extra.get("width", size)),
        infer_steps=int(settings.num_steps), guidance_scale=float(settings.guidance_scale), batch_size=1,
    )
    kwargs.update({key: extra[key] for key in PASSED_THROUGH if key in extra})
    return kwargs


def to_uint8_images(images: Sequence[Any]) -> Any:
    """PIL images (what ``End2End.predict`` returns under ``"images"``) -> uint8 tensor ``[N, 3, H, W]``."""
    import numpy as np
    import torch

    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    if not arrays:
        raise SamplerError("End2End.predict returned no image")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class End2EndSampler:
    """A :class:`~bestckpt.evaluation.sampler.Sampler` over a constructed ``End2End`` (NOT RUN here: see the module doc)."""

    def __init__(self, end2end: Any, load_key: str = "ema") -> None:
        if load_key not in ("ema", "module"):
            raise ValueError(f"load_key must be 'ema' or 'module' (End2End's --load-key), got {load_key!r}")
        self.gen = end2end
        self.load_key = load_key
        self._loaded: tuple[str, int] | None = None
        self._weights = "unknown"

    def _load(self, tag_dir: Path) -> str:  # NOT RUN: needs hydit and its weights
        from bestckpt.integrations.hunyuandit import load_tag_weights, model_states_file

        key = (str(Path(tag_dir).resolve()), model_states_file(tag_dir).stat().st_mtime_ns)
        if self._loaded != key:
            state, self._weights = load_tag_weights(tag_dir, prefer_ema=self.load_key == "ema")
            self.gen.model.load_state_dict(state, strict=True)
            self._loaded = key
        return self._weights

    def __call__(self, checkpoint_path: Path, prompts: Sequence[str], seeds: Sequence[int],
                 settings: Any, device: Any = None) -> Any:  # NOT RUN: needs hydit and its weights
        import torch

        from bestckpt.evaluation.sampler import SampleBatch

        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        weights = self._load(Path(checkpoint_path))
        images = [to_uint8_images(self.gen.predict(**predict_kwargs(p, int(s), settings))["images"])[:1]
                  for p, s in zip(prompts, seeds)]
        return SampleBatch(images=torch.cat(images), weights="online" if weights == "online" else "ema")


def make_sampler() -> End2EndSampler:  # NOT RUN: needs hydit and its weights
    """Factory for ``"bestckpt.integrations.hunyuandit_sampler:make_sampler"`` (see the module doc for its settings)."""
    end2end_cls, get_args = import_end2end()
    args = get_args(shlex.split(os.environ.get("BESTCKPT_HYDIT_ARGS", "--no-enhance")))  # get_args(default_args)
    load_key = os.environ.get("BESTCKPT_HYDIT_LOAD_KEY", "ema")
    return End2EndSampler(end2end_cls(args, Path(args.model_root)), load_key)
