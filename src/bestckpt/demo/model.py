"""A tiny text-conditioned DiT for the demo (32x32 RGB captioned shapes).

The layout follows DiT (Peebles & Xie, 2023): patch embedding, transformer blocks modulated by
adaLN-Zero from a conditioning vector, a final adaLN layer, unpatchify. Text conditioning comes
from a small transformer text encoder over the demo caption tokenizer and enters in two ways:
  * its masked-mean pooled vector is added to the timestep embedding (global conditioning for
    adaLN: colour of the background, overall style), and
  * its token sequence is attended to by a zero-gated cross-attention in every block (local
    conditioning: "top left" vs "bottom right" needs per-patch attention to words).
Classifier-free guidance needs an unconditional branch: ``forward(..., drop=mask)`` replaces the
caption of the masked rows by a learned null context (one learned token, learned pooled vector),
which training selects at random (caption dropout).

The model predicts a velocity for rectified flow (see ``train.py``); nothing in the network
depends on that choice except the name of its output.

Shapes (defaults): images x [N, 3, 32, 32] -> patches [N, T=64, D=96] with patch size 4;
tokens [N, L=16] -> text [N, L, Dt=96]; conditioning c [N, D]; output [N, 3, 32, 32].
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiTConfig", "TinyDiT", "TextEncoder", "timestep_embedding"]


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the demo DiT. Defaults are the documented demo recipe: about 0.75 M
    parameters, ~0.2 s per training step of 64 images on 2 CPU cores."""

    vocab_size: int
    max_tokens: int
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 4
    hidden: int = 96
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 2.0
    text_hidden: int = 96
    text_depth: int = 2
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                "pick a patch size that divides the image size (2 or 4 for 32x32)"
            )
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.vocab_size < 2 or self.max_tokens < 1:
            raise ValueError(
                f"vocab_size={self.vocab_size}, max_tokens={self.max_tokens}: take both from the "
                "demo Tokenizer (vocab size >= 2, max length >= 1)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of continuous times t in [0, 1]: t [N] -> [N, dim].

    Times are scaled by 1000 so that the frequencies span the same range as DiT's integer
    diffusion steps (otherwise all low frequencies would be nearly constant over [0, 1])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _sincos_2d(hidden: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, hidden] (as DiT: not learned, so it
    does not need training steps to become useful)."""
    assert hidden % 4 == 0, "hidden must be divisible by 4 for 2-D sin-cos embeddings"
    quarter = hidden // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        out = coord[:, None] * omega[None]
        parts += [torch.sin(out), torch.cos(out)]
    return torch.cat(parts, dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [N, T, D], shift/scale [N, D] -> x * (1 + scale) + shift, broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TextEncoder(nn.Module):
    """A small transformer over caption token ids.

    tokens [N, L] (pad_id for padding) -> (sequence [N, L, Dt], pooled [N, Dt], pad mask [N, L]).
    Pooled is the mean over non-padding tokens; an all-padding caption pools to zeros."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.pad_id = cfg.pad_id
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_hidden)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_tokens, cfg.text_hidden))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_hidden, nhead=4, dim_feedforward=cfg.text_hidden * 2, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, cfg.text_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_hidden)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if tokens.shape[1] > self.pos.shape[1]:
            raise ValueError(
                f"got {tokens.shape[1]} tokens per caption but the model was built for at most "
                f"{self.pos.shape[1]}; encode captions with the same Tokenizer the model was trained with"
            )
        pad = tokens.eq(self.pad_id)  # [N, L] True where padding
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        # An all-padding row would make attention softmax over nothing (NaN): unmask its first slot.
        attn_pad = pad.clone()
        attn_pad[attn_pad.all(dim=1), 0] = False
        h = self.norm(self.layers(h, src_key_padding_mask=attn_pad))
        keep = (~pad).unsqueeze(-1).to(h.dtype)  # [N, L, 1]
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return h, pooled, pad


class DiTBlock(nn.Module):
    """Self-attention + cross-attention to text + MLP, with adaLN-Zero.

    The conditioning vector c [N, D] yields shift/scale/gate for the self-attention and MLP
    branches and a gate for cross-attention; all gates start at zero so every block starts as
    the identity (DiT's finding: this trains fastest)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, text_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm_x = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.q_x = nn.Linear(hidden, hidden)
        self.kv_x = nn.Linear(text_hidden, 2 * hidden)
        self.proj_x = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        ada_linear = nn.Linear(hidden, 7 * hidden)
        nn.init.zeros_(ada_linear.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(ada_linear.bias)
        self.ada = nn.Sequential(nn.SiLU(), ada_linear)

    def _heads(self, x: Tensor) -> Tensor:  # [N, T, D] -> [N, H, T, D/H]
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, c: Tensor, text: Tensor, text_bias: Tensor) -> Tensor:
        # x [N, T, D]; c [N, D]; text [N, L, Dt]; text_bias [N, 1, 1, L] additive mask (0 or -inf)
        n, t, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2, gx = self.ada(c).chunk(7, dim=1)
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(n, t, d))
        q = self._heads(self.q_x(self.norm_x(x)))
        k, v = (self._heads(z) for z in self.kv_x(text).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=text_bias)
        x = x + gx[:, None] * self.proj_x(a.transpose(1, 2).reshape(n, t, d))
        x = x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))
        return x


class TinyDiT(nn.Module):
    """Text-to-image DiT: forward(x [N,3,H,W], t [N] in [0,1], tokens [N,L], drop [N] bool) -> [N,3,H,W]."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.hidden
        self.grid = cfg.image_size // p
        self.patch = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        self.register_buffer("pos", _sincos_2d(d, self.grid)[None], persistent=False)  # [1, T, D]
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text = TextEncoder(cfg)
        self.text_to_c = nn.Linear(cfg.text_hidden, d)
        # Null caption for classifier-free guidance: one learned token and a learned pooled vector.
        self.null_tokens = nn.Parameter(torch.randn(1, 1, cfg.text_hidden) * 0.02)
        self.null_pooled = nn.Parameter(torch.zeros(1, cfg.text_hidden))
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, cfg.text_hidden) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        final_ada_linear = nn.Linear(d, 2 * d)
        self.final_ada = nn.Sequential(nn.SiLU(), final_ada_linear)
        self.final = nn.Linear(d, p * p * cfg.in_channels)
        for m in (final_ada_linear, self.final):  # zero-init output: the model starts predicting 0
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def encode_text(self, tokens: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """tokens [N, L] -> (text [N, L, Dt], pooled [N, Dt], additive attention bias [N, 1, 1, L]).

        Rows with drop=True get the null context instead (their text is ignored): a single
        learned token visible to attention, the rest masked."""
        seq, pooled, pad = self.text(tokens)
        if drop is not None and bool(drop.any()):
            null_seq = torch.zeros_like(seq)
            null_seq[:, :1] = self.null_tokens
            null_pad = torch.ones_like(pad)
            null_pad[:, 0] = False
            d3 = drop[:, None, None]
            seq = torch.where(d3, null_seq, seq)
            pooled = torch.where(drop[:, None], self.null_pooled.expand_as(pooled), pooled)
            pad = torch.where(drop[:, None], null_pad, pad)
        pad = pad.clone()
        pad[pad.all(dim=1), 0] = False  # never an all-masked row (softmax over nothing is NaN)
        bias = torch.zeros(pad.shape, dtype=seq.dtype, device=seq.device).masked_fill(pad, float("-inf"))
        return seq, pooled, bias[:, None, None, :]

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor, drop: Tensor | None = None) -> Tensor:
        n, c_in, h, w = x.shape
        p = self.cfg.patch_size
        z = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # [N, T, D]
        text, pooled, bias = self.encode_text(tokens, drop)
        c = self.t_mlp(timestep_embedding(t, self.cfg.hidden)) + self.text_to_c(pooled)  # [N, D]
        for block in self.blocks:
            z = block(z, c, text, bias)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        z = self.final(_modulate(self.final_norm(z), shift, scale))  # [N, T, p*p*C]
        # unpatchify: [N, gh, gw, p, p, C] -> [N, C, gh*p, gw*p]
        g = self.grid
        z = z.view(n, g, g, p, p, c_in).permute(0, 5, 1, 3, 2, 4)
        return z.reshape(n, c_in, g * p, g * p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
