"""The demo's synthetic captioned shapes: determinism, caption round trip, held-out split, tokenizer."""
from __future__ import annotations

import itertools

import pytest
import torch

from bestckpt.demo import data as D

pytestmark = pytest.mark.usefixtures("one_thread")


def test_attributes_shape_and_colour_sets_disjoint_from_backgrounds():
    assert set(D.ATTRIBUTES["color"]).isdisjoint(D.ATTRIBUTES["background"])
    assert set(D.COLOR_RGB) == set(D.ATTRIBUTES["color"])
    assert set(D.BACKGROUND_RGB) == set(D.ATTRIBUTES["background"])


def test_caption_round_trip_for_every_combination():
    combos = D.combinations()
    assert len(combos) == 2 * 7 * 5 * 9 * 3
    captions = set()
    for attrs in combos:
        text = D.caption(attrs)
        assert D.parse_caption(text) == attrs
        captions.add(text)
    assert len(captions) == len(combos)  # captions identify combinations
    assert D.caption(D.parse_caption("A  Small RED circle in the center on a gray background.")) == (
        "a small red circle in the center on a gray background")


def test_bad_input_messages_name_the_value():
    with pytest.raises(ValueError, match="magenta"):
        D.caption({"size": "small", "color": "magenta", "shape": "circle", "position": "top", "background": "white"})
    with pytest.raises(ValueError, match="a dog"):
        D.parse_caption("a dog")
    with pytest.raises(ValueError, match="lack"):
        D.render({"size": "small"})
    with pytest.raises(ValueError, match="n=1000"):
        D.eval_prompts(1000, 0)


def test_render_is_deterministic_and_exact():
    attrs = D.parse_caption("a large blue triangle at the bottom right on a white background")
    a, b = D.render(attrs), D.render(attrs)
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b)
    # background pixels far from the shape are the exact background colour; the centre of the shape is the colour
    assert a[:, 0, 0].tolist() == list(D.BACKGROUND_RGB["white"])
    assert a[:, 22, 24].tolist() == list(D.COLOR_RGB["blue"])
    # anti-aliased: some edge pixels are strictly between the two colours
    red = a[0].int()
    assert ((red > D.COLOR_RGB["blue"][0]) & (red < D.BACKGROUND_RGB["white"][0])).any()


def test_every_attribute_changes_the_render():
    base = D.parse_caption("a small red circle at the top left on a white background")
    ref = D.render(base)
    for name, values in D.ATTRIBUTES.items():
        for value in values:
            if value == base[name]:
                continue
            other = D.render({**base, name: value})
            assert not torch.equal(ref, other), (name, value)


def test_dataset_deterministic_and_seed_dependent():
    a = D.ShapesDataset(20, seed=3)
    b = D.ShapesDataset(20, seed=3)
    c = D.ShapesDataset(20, seed=4)
    for i in range(20):
        ia, ca, ka = a[i]
        ib, cb, kb = b[i]
        assert torch.equal(ia, ib) and ca == cb and torch.equal(ka, kb)
        assert ia.dtype == torch.float32 and ia.shape == (3, 32, 32)
        assert ia.min() >= -1.0 and ia.max() <= 1.0
        assert D.indices_to_attrs(ka.tolist()) == D.parse_caption(ca)
        # unjittered dataset images are exactly the reference renders
        ref = D.reference_images([D.parse_caption(ca)])[0]
        assert torch.equal(((ia + 1.0) * 127.5).round().to(torch.uint8), ref)
    assert [a[i][1] for i in range(20)] != [c[i][1] for i in range(20)]


def test_jitter_varies_renders_but_keeps_attributes():
    ds = D.ShapesDataset(30, seed=0, jitter=1.0)
    diffs = 0
    for i in range(30):
        img, cap, _ = ds[i]
        ref = D.reference_images([D.parse_caption(cap)])[0].float() / 127.5 - 1.0
        diffs += int(not torch.equal(img, ref))
        assert (img - ref).abs().mean() < 0.5
    assert diffs >= 25


def test_heldout_split_disjoint_from_training():
    train = {tuple(sorted(a.items())) for a in D.combinations("train")}
    held = {tuple(sorted(a.items())) for a in D.combinations("heldout")}
    assert train.isdisjoint(held)
    assert len(held) == round(D.HELDOUT_FRACTION * (len(train) + len(held)))
    # every single attribute value still occurs in training
    for name, values in D.ATTRIBUTES.items():
        assert {dict(t)[name] for t in train} == set(values)
    # samplers respect the split
    ds = D.ShapesDataset(500, seed=11, split="train")
    assert not any(D.is_heldout(ds.sample(i)[0].attrs) for i in range(500))
    hs = D.ShapesDataset(100, seed=11, split="heldout")
    assert all(D.is_heldout(hs.sample(i)[0].attrs) for i in range(100))
    g = torch.Generator().manual_seed(0)
    assert not any(D.is_heldout(D.random_attributes(g)) for _ in range(300))


def test_eval_prompts_and_references():
    prompts = D.eval_prompts(20, seed=5)
    assert prompts == D.eval_prompts(20, seed=5)
    assert prompts != D.eval_prompts(20, seed=6)
    assert len({c for c, _ in prompts}) == 20
    for cap, attrs in prompts:
        assert D.is_heldout(attrs) and D.caption(attrs) == cap
    refs = D.reference_images([a for _, a in prompts])
    assert refs.shape == (20, 3, 32, 32) and refs.dtype == torch.uint8
    assert torch.equal(refs[3], D.render(prompts[3][1]))


def test_tokenizer():
    tok = D.Tokenizer()
    caps = [D.caption(a) for a in itertools.islice(D.combinations(), 0, None, 97)]
    ids = tok.encode(caps)
    assert ids.shape == (len(caps), 16) and ids.dtype == torch.long
    assert not (ids == tok.UNK).any()
    assert tok.decode(ids) == caps
    # every word of every caption is in the vocabulary; ids are unique per word
    assert len(set(tok.words)) == tok.vocab_size
    odd = tok.encode(["A purple Zebra, at the top!", ""])
    assert odd[0].tolist()[:6] == [tok.word_to_id["a"], tok.word_to_id["purple"], tok.UNK,
                                   tok.word_to_id["at"], tok.word_to_id["the"], tok.word_to_id["top"]]
    assert (odd[0, 6:] == tok.PAD).all() and (odd[1] == tok.PAD).all()
    long = tok.encode([" ".join(["red"] * 40)])
    assert long.shape == (1, 16) and (long != tok.PAD).all()
    with pytest.raises(TypeError, match="list of strings"):
        tok.encode("a red circle")
