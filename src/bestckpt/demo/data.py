"""Synthetic captioned shapes for the offline demo: generated on the fly, seeded, no download.

Each image is a 32x32 RGB picture of one shape described by five attributes (size, colour,
shape, position on a 3x3 grid, background colour) with a caption that states all of them::

    "a small red circle at the top left on a white background"

Why this data: a text-to-image model can learn it on a CPU in minutes, yet the prompt really
conditions the image (5 attributes, 2*7*5*9*3 = 1890 combinations), and every prompt has an
*exact* reference image because rendering is a pure function of the attributes. That gives LPIPS
paired references and FID/KID a reference set without any dataset on disk.

Split: a fixed, seeded 10 % of the attribute combinations is *held out* (`split="heldout"`): the
training split never draws them, and the evaluation prompts (`eval_prompts`) are drawn only from
them, so checkpoints are scored on prompts they were not trained on (each held-out combination
differs from training ones only in how known attribute values are combined).

Rendering is deterministic (4x4 supersampled coverage, i.e. anti-aliased, then rounded to uint8).
Optional *jitter* (small offsets, scale and colour changes) gives the evaluators' training data
variety; references and the default dataset use no jitter.
"""
from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "BACKGROUND_RGB",
    "COLOR_RGB",
    "HELDOUT_FRACTION",
    "IMAGE_SIZE",
    "Jitter",
    "Sample",
    "ShapesDataset",
    "Tokenizer",
    "attrs_to_indices",
    "caption",
    "combinations",
    "eval_prompts",
    "indices_to_attrs",
    "is_heldout",
    "parse_caption",
    "random_attributes",
    "random_jitter",
    "reference_images",
    "render",
]

IMAGE_SIZE = 32

#: Attribute name -> possible values, in a fixed order (the index of a value is its class id).
ATTRIBUTES: dict[str, list[str]] = {
    "size": ["small", "large"],
    "color": ["red", "green", "blue", "yellow", "purple", "orange", "cyan"],
    "shape": ["circle", "square", "triangle", "cross", "diamond"],
    "position": [
        "top left", "top", "top right",
        "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    ],
    "background": ["white", "black", "gray"],
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)

#: Shape colours and background colours are disjoint sets, so a shape is never invisible.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
    "cyan": (40, 200, 210),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}

HELDOUT_FRACTION = 0.10
_HELDOUT_SEED = 20_261_127  # fixed forever: changing it changes which prompts are evaluation prompts
_SUPERSAMPLE = 4
# Shape centres on the 3x3 grid and half-extents, as fractions of the image side.
_GRID = (0.25, 0.5, 0.75)
_HALF_EXTENT = {"small": 0.125, "large": 0.22}

Attrs = Mapping[str, str]


@dataclass(frozen=True)
class Sample:
    """One captioned example: `attrs` maps each name of `ATTRIBUTES` to one of its values."""

    attrs: Mapping[str, str]
    caption: str


@dataclass(frozen=True)
class Jitter:
    """Small deviations from the canonical render (all zero = the exact reference render).

    dx, dy: centre offset in pixels; scale: multiplies the half-extent; color_delta and
    background_delta: per-channel RGB offsets (ints added before clamping to 0..255).
    """

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    color_delta: tuple[int, int, int] = (0, 0, 0)
    background_delta: tuple[int, int, int] = (0, 0, 0)


def _validate(attrs: Attrs) -> None:
    missing = [name for name in ATTRIBUTES if name not in attrs]
    if missing:
        raise ValueError(f"attributes {dict(attrs)!r} lack {missing}; give one value for each of {list(ATTRIBUTES)}")
    for name, values in ATTRIBUTES.items():
        if attrs[name] not in values:
            raise ValueError(f"attribute {name}={attrs[name]!r} is not one of {values}")


def attrs_to_indices(attrs: Attrs) -> tuple[int, ...]:
    """Class ids of the attribute values, in `ATTRIBUTE_NAMES` order."""
    _validate(attrs)
    return tuple(ATTRIBUTES[name].index(attrs[name]) for name in ATTRIBUTE_NAMES)


def indices_to_attrs(indices: Sequence[int]) -> dict[str, str]:
    """Inverse of `attrs_to_indices`."""
    idx = [int(i) for i in indices]
    if len(idx) != len(ATTRIBUTE_NAMES):
        raise ValueError(f"got {len(idx)} indices {idx}; expected one per attribute {ATTRIBUTE_NAMES}")
    out = {}
    for name, i in zip(ATTRIBUTE_NAMES, idx):
        if not 0 <= i < len(ATTRIBUTES[name]):
            raise ValueError(f"index {i} out of range for attribute {name!r} ({len(ATTRIBUTES[name])} values)")
        out[name] = ATTRIBUTES[name][i]
    return out


# ----------------------------------------------------------------------------------------- captions

def _position_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def caption(attrs: Attrs) -> str:
    """"a {size} {color} {shape} at the {position} on a {background} background" ("in the center")."""
    _validate(attrs)
    return (f"a {attrs['size']} {attrs['color']} {attrs['shape']} {_position_phrase(attrs['position'])} "
            f"on a {attrs['background']} background")


def _alternation(values: Sequence[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


_EDGE_POSITIONS = [p for p in ATTRIBUTES["position"] if p != "center"]
_CAPTION_RE = re.compile(
    rf"^a (?P<size>{_alternation(ATTRIBUTES['size'])}) (?P<color>{_alternation(ATTRIBUTES['color'])}) "
    rf"(?P<shape>{_alternation(ATTRIBUTES['shape'])}) "
    rf"(?:in the (?P<center>center)|at the (?P<position>{_alternation(_EDGE_POSITIONS)})) "
    rf"on a (?P<background>{_alternation(ATTRIBUTES['background'])}) background$"
)


def parse_caption(text: str) -> dict[str, str]:
    """Attributes stated by a caption written by `caption` (case and extra spaces ignored)."""
    norm = " ".join(str(text).lower().replace(".", " ").split())
    m = _CAPTION_RE.match(norm)
    if m is None:
        raise ValueError(f"caption {text!r} does not follow the demo pattern, e.g. {caption(_EXAMPLE)!r}")
    groups = m.groupdict()
    return {
        "size": groups["size"],
        "color": groups["color"],
        "shape": groups["shape"],
        "position": "center" if groups["center"] else groups["position"],
        "background": groups["background"],
    }


_EXAMPLE = {"size": "small", "color": "red", "shape": "circle", "position": "top left", "background": "white"}


# ------------------------------------------------------------------------------------------- splits

@functools.cache
def _split_table() -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], frozenset]:
    """(train combos, heldout combos, heldout set) as index tuples; a fixed seeded permutation."""
    all_combos = list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values())))
    g = torch.Generator().manual_seed(_HELDOUT_SEED)
    perm = torch.randperm(len(all_combos), generator=g).tolist()
    n_held = round(HELDOUT_FRACTION * len(all_combos))
    held = sorted(all_combos[i] for i in perm[:n_held])
    train = sorted(all_combos[i] for i in perm[n_held:])
    return tuple(train), tuple(held), frozenset(held)


def combinations(split: str | None = None) -> list[dict[str, str]]:
    """All attribute combinations of a split ("train", "heldout", or None for all), sorted."""
    train, held, _ = _split_table()
    if split is None:
        combos = sorted(train + held)
    elif split == "train":
        combos = list(train)
    elif split == "heldout":
        combos = list(held)
    else:
        raise ValueError(f"split={split!r}; use 'train', 'heldout' or None")
    return [indices_to_attrs(c) for c in combos]


def is_heldout(attrs: Attrs) -> bool:
    """Whether this combination is reserved for evaluation (never drawn by the training split)."""
    return attrs_to_indices(attrs) in _split_table()[2]


def random_attributes(generator: torch.Generator, split: str | None = "train") -> dict[str, str]:
    """One combination drawn uniformly from `split` ("train" by default, "heldout", None = any)."""
    train, held, _ = _split_table()
    if split is None:
        pool = train + held
    elif split == "train":
        pool = train
    elif split == "heldout":
        pool = held
    else:
        raise ValueError(f"split={split!r}; use 'train', 'heldout' or None")
    i = int(torch.randint(len(pool), (1,), generator=generator))
    return indices_to_attrs(pool[i])


# ---------------------------------------------------------------------------------------- rendering

def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside-test in coordinates normalised by the half-extent (v grows downwards)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (au <= 0.85) & (av <= 0.85)
    if shape == "diamond":
        return au + av <= 1.15
    if shape == "triangle":  # apex up, base at the bottom
        return (v <= 0.8) & (v >= -1.0 + 1.8 * au)
    if shape == "cross":
        return ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0))
    raise ValueError(f"shape={shape!r} is not one of {ATTRIBUTES['shape']}")


@functools.lru_cache(maxsize=8)
def _subpixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * _SUPERSAMPLE
    centres = (np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(_SUPERSAMPLE)  # pixel units
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return xx, yy


def _clamp_rgb(rgb: Sequence[int], delta: Sequence[int]) -> np.ndarray:
    return np.array([min(255, max(0, int(c) + int(d))) for c, d in zip(rgb, delta)], dtype=np.float32)


def render(attrs: Attrs, size: int = IMAGE_SIZE, *, jitter: Jitter | None = None) -> torch.Tensor:
    """Render one image: uint8 Tensor[3, size, size].

    Deterministic: the same attributes (and jitter) give bit-identical images. Coverage of each
    pixel is measured on a 4x4 sub-pixel grid, so edges are anti-aliased. Computed in float32 numpy
    (single-threaded): for renders this small, torch's intra-op threads only add overhead.
    """
    _validate(attrs)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size={size!r}; use an integer >= 8 (the demo uses {IMAGE_SIZE})")
    j = jitter or Jitter()
    row, col = divmod(ATTRIBUTES["position"].index(attrs["position"]), 3)
    cx = np.float32(_GRID[col] * size + j.dx)
    cy = np.float32(_GRID[row] * size + j.dy)
    half = np.float32(_HALF_EXTENT[attrs["size"]] * size * j.scale)
    xx, yy = _subpixel_grid(size)
    inside = _shape_mask(attrs["shape"], (xx - cx) / half, (yy - cy) / half).astype(np.float32)
    # fraction of the 4x4 sub-pixels inside (exact multiples of 1/16): [1, size, size]
    coverage = inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)[None]
    fg = _clamp_rgb(COLOR_RGB[attrs["color"]], j.color_delta)[:, None, None]
    bg = _clamp_rgb(BACKGROUND_RGB[attrs["background"]], j.background_delta)[:, None, None]
    img = bg * (np.float32(1.0) - coverage) + fg * coverage  # [3, size, size]
    return torch.from_numpy(np.clip(np.round(img), 0, 255).astype(np.uint8))


def _levels(r: torch.Tensor, strength: float) -> tuple[int, int, int]:
    """Three uniform [-1, 1] draws as colour offsets of up to 20 levels times ``strength``."""
    a, b, c = (int(round(float(x) * 20 * strength)) for x in r)
    return a, b, c


def random_jitter(generator: torch.Generator, strength: float = 1.0) -> Jitter:
    """Random small deviations (strength 1: up to +-2 px offset, +-15 % scale, +-20 colour levels)."""
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"jitter strength={strength!r}; use a value in [0, 2]")
    r = torch.rand(9, generator=generator) * 2.0 - 1.0  # uniform in [-1, 1]
    return Jitter(
        dx=float(r[0]) * 2.0 * strength,
        dy=float(r[1]) * 2.0 * strength,
        scale=1.0 + float(r[2]) * 0.15 * strength,
        color_delta=_levels(r[3:6], strength),
        background_delta=_levels(r[6:9], strength),
    )


def reference_images(attrs_list: Sequence[Attrs], size: int = IMAGE_SIZE) -> torch.Tensor:
    """Exact reference renders for the evaluation protocol: uint8 Tensor[N, 3, size, size]."""
    if len(attrs_list) == 0:
        raise ValueError("reference_images got an empty attribute list; pass at least one combination")
    return torch.stack([render(a, size) for a in attrs_list])


def eval_prompts(n: int, seed: int = 0) -> list[tuple[str, dict[str, str]]]:
    """`n` distinct held-out prompts as (caption, attrs), in a seeded order (same n, seed -> same list)."""
    held = _split_table()[1]
    if not isinstance(n, int) or not 1 <= n <= len(held):
        raise ValueError(f"n={n!r} evaluation prompts requested; choose 1..{len(held)} (size of the held-out set)")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(held), generator=g)[:n].tolist()
    out = []
    for i in order:
        attrs = indices_to_attrs(held[i])
        out.append((caption(attrs), attrs))
    return out


# ------------------------------------------------------------------------------------------ dataset

class ShapesDataset(Dataset):
    """`num` seeded examples of a split, rendered on the fly.

    Item i is `(image, caption, attribute_indices)`:
      image: float32 Tensor[3, 32, 32] in [-1, 1] (uint8 value / 127.5 - 1), the DiT's pixel space;
      caption: str; attribute_indices: int64 Tensor[5] in `ATTRIBUTE_NAMES` order.
    Item i depends only on (seed, i, split, jitter), so workers and reruns agree.
    `jitter` > 0 perturbs each render (see `random_jitter`); 0 gives exact reference renders.
    """

    def __init__(self, num: int, seed: int, split: str = "train", *, jitter: float = 0.0, size: int = IMAGE_SIZE):
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"num={num!r}; use a positive number of examples")
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r}; use 'train' or 'heldout'")
        if not 0.0 <= jitter <= 2.0:
            raise ValueError(f"jitter={jitter!r}; use a strength in [0, 2]")
        self.num, self.seed, self.split, self.jitter, self.size = num, int(seed), split, float(jitter), size

    def __len__(self) -> int:
        return self.num

    def sample(self, index: int) -> tuple[Sample, Jitter | None]:
        """Attributes, caption and jitter of example `index` (no rendering)."""
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for a dataset of {self.num}")
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (2**63 - 1))
        attrs = random_attributes(g, self.split)
        jit = random_jitter(g, self.jitter) if self.jitter > 0 else None
        return Sample(attrs, caption(attrs)), jit

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        smp, jit = self.sample(index)
        img = render(smp.attrs, self.size, jitter=jit).float() / 127.5 - 1.0
        return img, smp.caption, torch.tensor(attrs_to_indices(smp.attrs), dtype=torch.long)


# ---------------------------------------------------------------------------------------- tokenizer

def _caption_vocabulary() -> list[str]:
    words: list[str] = ["a", "at", "the", "in", "on", "background"]
    for values in ATTRIBUTES.values():
        for value in values:
            for w in value.split():
                if w not in words:
                    words.append(w)
    return words


class Tokenizer:
    """Word-level tokenizer over the caption vocabulary.

    Ids: 0 = PAD, 1 = UNK (any word outside the vocabulary), then the caption words in a fixed
    order. `encode` lowercases, splits on whitespace and punctuation, truncates to `max_length`
    (16 > the longest caption's 12 words) and pads with PAD, returning int64 Tensor[N, max_length].
    """

    PAD = 0
    UNK = 1

    def __init__(self, max_length: int = 16):
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length={max_length!r}; use a positive integer (default 16)")
        self.max_length = max_length
        self.words: list[str] = ["<pad>", "<unk>"] + _caption_vocabulary()
        self.word_to_id = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", str(text).lower())

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """int64 Tensor[N, max_length]; a lone string is rejected (wrap it in a list)."""
        if isinstance(texts, str):
            raise TypeError(f"encode expects a list of strings, got the string {texts!r}; pass [{texts!r}]")
        out = torch.full((len(texts), self.max_length), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.word_to_id.get(w, self.UNK) for w in self.tokenize(text)][: self.max_length]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Inverse of `encode` up to padding, case and unknown words ("<unk>")."""
        rows = ids.tolist() if ids.dim() == 2 else [ids.tolist()]
        return [" ".join(self.words[i] for i in row if i != self.PAD) for row in rows]
