"""The demo DiT: shapes, conditioning, a loss that decreases, a deterministic sampler."""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch

from bestckpt import fsio
from bestckpt.demo.data import Tokenizer, caption, combinations, render
from bestckpt.demo.model import DiTConfig, TinyDiT, timestep_embedding
from bestckpt.demo.sampler import (
    DemoSampler,
    euler_sample,
    initial_noise,
    load_model,
    make_sampler,
)
from bestckpt.demo.train import (
    find_resume_checkpoint,
    flow_matching_loss,
    save_checkpoint,
    update_ema,
)
from bestckpt.evaluation.sampler import SamplerSettings, validate_sample_batch
from bestckpt.fsio import TEMP_PREFIX

torch.set_num_threads(1)
TOK = Tokenizer()


def small_config(**kw) -> DiTConfig:
    base = dict(vocab_size=TOK.vocab_size, max_tokens=TOK.max_length, hidden=32, depth=1, heads=2, text_hidden=32,
                text_depth=1)
    base.update(kw)
    return DiTConfig(**base)


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    combos = combinations("train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(combos), (n,), generator=g).tolist()
    attrs = [combos[i] for i in idx]
    images = torch.stack([render(a) for a in attrs]).float() / 127.5 - 1.0
    caps = [caption(a) for a in attrs]
    return images, TOK.encode(caps), caps


def perturbed(model: TinyDiT, seed: int = 0) -> TinyDiT:
    """adaLN-Zero starts every block (and the output) at zero; give all weights random values so
    tests exercise the whole network rather than a constant-zero function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("patch", [2, 4])
def test_forward_shapes(patch: int) -> None:
    torch.manual_seed(0)
    model = perturbed(TinyDiT(small_config(patch_size=patch)))
    x, tokens, _ = batch(3)
    out = model(x, torch.rand(3), tokens)
    assert out.shape == (3, 3, 32, 32)
    assert torch.isfinite(out).all()
    seq, pooled, bias = model.encode_text(tokens)
    assert seq.shape == (3, TOK.max_length, 32) and pooled.shape == (3, 32) and bias.shape == (3, 1, 1, TOK.max_length)
    assert timestep_embedding(torch.rand(5), 32).shape == (5, 32)


def test_zero_init_output_and_caption_conditioning() -> None:
    torch.manual_seed(0)
    model = TinyDiT(small_config())
    x, tokens, _ = batch(2)
    assert torch.count_nonzero(model(x, torch.rand(2), tokens)) == 0  # adaLN-Zero: starts at exactly 0
    model = perturbed(model)
    t = torch.full((2,), 0.5)
    other = tokens.flip(0)
    # the caption matters ...
    assert not torch.allclose(model(x, t, tokens), model(x, t, other))
    # ... except for dropped rows, which all see the same learned null caption (classifier-free guidance)
    drop = torch.ones(2, dtype=torch.bool)
    assert torch.allclose(model(x, t, tokens, drop), model(x, t, other, drop), atol=1e-6)
    # an empty caption (all padding) is still finite
    empty = TOK.encode(["", ""])
    assert torch.isfinite(model(x, t, empty)).all()


def test_bad_config_and_token_length_are_explained() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        small_config(patch_size=5)
    with pytest.raises(ValueError, match="vocab_size"):
        DiTConfig(vocab_size=1, max_tokens=16)
    model = TinyDiT(small_config(max_tokens=4))
    with pytest.raises(ValueError, match="at most 4"):
        model(torch.zeros(1, 3, 32, 32), torch.rand(1), torch.ones(1, 6, dtype=torch.long))


def test_loss_decreases_and_ema_follows() -> None:
    torch.manual_seed(0)
    model = TinyDiT(small_config())
    ema = deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, tokens, _ = batch(16, seed=1)
    no_drop = torch.zeros(16, dtype=torch.bool)

    def held_out_loss(m: TinyDiT) -> float:
        with torch.no_grad():
            return float(flow_matching_loss(m, x, tokens, no_drop, torch.Generator().manual_seed(123)))

    before = held_out_loss(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = flow_matching_loss(model, x, tokens, torch.rand(16, generator=g) < 0.1, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model, 0.9)
    after = held_out_loss(model)
    assert after < 0.8 * before, (before, after)
    assert held_out_loss(ema) < before
    # EMA moved towards the model but is not the model
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(ema.parameters(), model.parameters()))
    assert diff > 0


def _checkpoint(tmp_path: Path, step: int = 10, with_ema: bool = True) -> Path:
    torch.manual_seed(0)
    model = perturbed(TinyDiT(small_config()))
    ema = perturbed(deepcopy(model), seed=1)
    state = {"model": model.state_dict(), "opt": {}, "step": step, "epoch": 0, "args": {},
             "model_config": model.cfg.to_dict()}
    if with_ema:
        state["ema"] = ema.state_dict()
    path = tmp_path / f"{step:07d}.pt"
    save_checkpoint(path, state)
    return path


def test_checkpoint_atomic_save_and_resume_point(tmp_path: Path) -> None:
    assert find_resume_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or p.name.startswith(TEMP_PREFIX)]  # renamed away
    (tmp_path / "best.pt").symlink_to("0000010.pt")
    (tmp_path / "0000040.pt.tmp").write_bytes(b"half")  # another writer's temp files are no resume point
    fsio.temp_name(tmp_path, "0000050.pt").write_bytes(b"half")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "0000020.pt"


def test_sampler_is_deterministic_and_uses_ema(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    sampler = make_sampler()
    settings = SamplerSettings(num_steps=4, guidance_scale=2.0, image_size=32)
    _, caps = batch(3)[1:]
    seeds = [7, 8, 9]
    a = sampler(path, caps, seeds, settings, torch.device("cpu"))
    b = DemoSampler()(path, caps, seeds, settings, torch.device("cpu"))
    out = validate_sample_batch(a, expected_n=3, image_size=32)
    assert out.weights == "ema"
    assert a.images.dtype == torch.uint8 and a.images.shape == (3, 3, 32, 32)
    assert torch.equal(a.images, b.images)  # same prompts + seeds -> same images, fresh sampler or not
    # per-prompt noise: a prompt's image does not depend on the batch it was sampled in
    alone = sampler(path, caps[1:2], seeds[1:2], settings, torch.device("cpu"))
    assert (alone.images.int() - a.images[1:2].int()).abs().max() <= 1
    # different seeds give different images
    c = sampler(path, caps, [1, 2, 3], settings, torch.device("cpu"))
    assert not torch.equal(a.images, c.images)
    # EMA weights differ from the online weights, and the sampler says which it used
    (tmp_path / "online").mkdir()
    online_path = _checkpoint(tmp_path / "online", with_ema=False)
    d = sampler(online_path, caps, seeds, settings, torch.device("cpu"))
    assert d.weights == "online"
    assert not torch.equal(a.images, d.images)


def test_sampler_rejects_wrong_inputs(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    sampler = make_sampler()
    with pytest.raises(ValueError, match="seeds"):
        sampler(path, ["a red circle"], [1, 2], SamplerSettings(num_steps=1, image_size=32), "cpu")
    with pytest.raises(ValueError, match="image_size"):
        sampler(path, ["a red circle"], [1], SamplerSettings(num_steps=1, image_size=64), "cpu")
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": 1}, bogus)
    with pytest.raises(ValueError, match="not a demo checkpoint"):
        load_model(bogus)


def test_euler_sampler_reaches_data_for_an_exact_velocity() -> None:
    """With the exact velocity of a single data point, Euler integration of the rectified flow
    lands on that point: x_t = (1-t) x0 + t eps has constant velocity eps - x0."""
    x0 = torch.rand(1, 3, 32, 32) * 2 - 1
    eps = initial_noise([5], (3, 32, 32))

    class Exact(torch.nn.Module):
        def forward(self, x, t, tokens, drop=None):  # noqa: ANN001
            tt = t[:, None, None, None]
            return (x - x0.expand_as(x)) / tt.clamp_min(1e-6)  # v = eps - x0 expressed through x_t

    out = euler_sample(Exact(), torch.zeros(1, 4, dtype=torch.long), eps, num_steps=3, guidance_scale=1.0)
    assert torch.allclose(out, x0, atol=1e-4)
