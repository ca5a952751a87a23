"""Protocol: prompt files, references, seeds, hash stability, JSON round trip, sample-size warnings."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from pipeline_kit import write_reference_images

from bestckpt.evaluation.prompts import load_prompt_file
from bestckpt.evaluation.protocol import (
    Protocol,
    ProtocolError,
    SmallSampleWarning,
    derive_seed,
)
from bestckpt.evaluation.sampler import (
    SampleBatch,
    SamplerError,
    SamplerOutputError,
    SamplerSettings,
    load_sampler,
    validate_sample_batch,
)


def _quiet(**kw) -> Protocol:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(**kw)


def test_txt_csv_json_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a red square\n\n  a blue circle  \n")
    assert load_prompt_file(tmp_path / "p.txt") == (("a red square", "a blue circle"), (None, None))
    refs = write_reference_images(tmp_path / "refs", 2)
    (tmp_path / "p.csv").write_text("image_path,text_en\nrefs/ref_000.png,a cat\n,a dog\n")
    prompts, paths = load_prompt_file(tmp_path / "p.csv")
    assert prompts == ("a cat", "a dog")
    assert paths == (tmp_path / "refs" / "ref_000.png", None)
    (tmp_path / "p.json").write_text(json.dumps(["x", {"text": "y", "image_path": str(refs[1])}]))
    prompts, paths = load_prompt_file(tmp_path / "p.json")
    assert prompts == ("x", "y") and paths == (None, refs[1])


def test_csv_missing_columns_names_found_and_expected(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("path,caption\na.png,hello\n")
    with pytest.raises(ProtocolError) as err:
        load_prompt_file(tmp_path / "bad.csv")
    msg = str(err.value)
    assert "['path', 'caption']" in msg and "text_en" in msg and "image_path" in msg


def test_missing_reference_images_are_listed(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("image_path,text_en\nnope1.png,a\nnope2.png,b\n")
    proto_file = tmp_path / "proto.json"
    proto_file.write_text(json.dumps({"prompts_file": "p.csv", "num_samples": 2, "metrics": ["clip_score"]}))
    with pytest.raises(ProtocolError) as err:
        Protocol.from_file(proto_file)
    assert "nope1.png" in str(err.value) and "nope2.png" in str(err.value) and "2 reference" in str(err.value)


def test_seeds_are_fixed_distinct_and_cycle_prompts() -> None:
    p = _quiet(prompts=["a", "b", "c"], num_samples=7, seed=3)
    assert p.sample_prompts == ("a", "b", "c", "a", "b", "c", "a")
    assert p.sample_seeds == _quiet(prompts=["a", "b", "c"], num_samples=7, seed=3).sample_seeds
    assert len(set(p.sample_seeds)) == 7
    assert p.sample_seeds[0] == derive_seed(3, 0) and 0 <= p.sample_seeds[0] < 2**32
    assert _quiet(prompts=["a"], num_samples=3, seed=4).sample_seeds[:1] != p.sample_seeds[:1]


def test_hash_covers_settings_and_reference_contents(tmp_path: Path) -> None:
    refs = write_reference_images(tmp_path / "refs", 2)
    base = dict(prompts=["a", "b"], reference_images=refs, num_samples=2)
    h = _quiet(**base).hash
    assert h == _quiet(**base).hash and len(h) == 64
    assert _quiet(**base, seed=1).hash != h
    assert _quiet(**{**base, "num_samples": 4}).hash != h
    assert _quiet(**base, sampler=SamplerSettings(num_steps=20)).hash != h
    assert _quiet(**base, composite_weights={"clip_score": 1.0}).hash != h
    assert _quiet(**base, metric_options={"kid": {"subsets": 5}}).hash != h
    assert _quiet(**base, name="renamed").hash == h  # a label, not a setting
    refs[0].write_bytes(refs[1].read_bytes())  # same path, different contents
    assert _quiet(**base).hash != h


def test_json_round_trip_keeps_hash(tmp_path: Path) -> None:
    refs = write_reference_images(tmp_path / "refs", 2)
    write_reference_images(tmp_path / "set", 3)
    p = _quiet(prompts=["a", "b"], reference_images=refs, reference_dir=tmp_path / "set", num_samples=4, seed=9,
               sampler=SamplerSettings(num_steps=10, guidance_scale=2.0, image_size=32, extra={"solver": "ddim"}))
    assert set(p.metrics) == {"clip_score", "lpips", "inception_score", "fid", "kid", "composite_score"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        q = Protocol.from_file(p.to_file(tmp_path / "out" / "protocol.json"))
    assert q == p and q.hash == p.hash


def test_defaults_follow_available_data_and_bad_values_are_named(tmp_path: Path) -> None:
    p = _quiet(prompts=["a"], num_samples=1)
    assert p.metrics == ("clip_score", "inception_score", "composite_score")
    refs = write_reference_images(tmp_path / "refs", 1)
    partial = _quiet(prompts=["a", "b"], reference_images=[refs[0], None], num_samples=2)
    assert "lpips" not in partial.metrics and partial.sample_reference(0) == refs[0]  # comparisons still made
    with pytest.raises(ProtocolError, match="1 of 2 prompts have none"):
        _quiet(prompts=["a", "b"], reference_images=[refs[0], None], metrics=["lpips"])
    with pytest.raises(ProtocolError, match="reference_dir"):
        _quiet(prompts=["a"], metrics=["fid"])
    with pytest.raises(ProtocolError, match="num_samples must be an integer >= 1, got 0"):
        Protocol(prompts=["a"], num_samples=0)
    with pytest.raises(ProtocolError, match="2 entries for 1 prompts"):
        Protocol(prompts=["a"], reference_images=[None, None])
    with pytest.raises(ProtocolError, match="unknown key"):
        (tmp_path / "x.json").write_text(json.dumps({"prompts": ["a"], "nums": 3}))
        Protocol.from_file(tmp_path / "x.json")
    # composite weights obey the metrics' one rule (positive, finite; 0 drops a component), refused up front
    with pytest.raises(ProtocolError, match="positive"):
        _quiet(prompts=["a"], composite_weights={"clip_score": -0.4})
    with pytest.raises(ProtocolError, match="positive"):
        _quiet(prompts=["a"], composite_weights={"clip_score": float("nan")})
    assert _quiet(prompts=["a"], composite_weights={"clip_score": 1.0, "fid": 0}).composite_weights["fid"] == 0.0


def test_small_sample_counts_warn(tmp_path: Path) -> None:
    write_reference_images(tmp_path / "set", 2)
    with pytest.warns(SmallSampleWarning, match="FID"):
        Protocol(prompts=["a"], reference_dir=tmp_path / "set", num_samples=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSampleWarning)
        Protocol(prompts=["a"], reference_dir=tmp_path / "set")  # the default is large enough


def test_load_sampler_specs() -> None:
    s = load_sampler("pipeline_kit:make_sampler")
    assert callable(s)
    for bad, needle in [("nocolon", "package.module:factory"), ("no_such_mod_xyz:f", "cannot import"),
                        ("pipeline_kit:nope", "no attribute"), ("pipeline_kit:TESTS_DIR", "not a factory")]:
        with pytest.raises(SamplerError, match=needle):
            load_sampler(bad)


def test_validate_sample_batch_names_what_was_received() -> None:
    import torch

    ok = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert validate_sample_batch(SampleBatch(ok, "online"), expected_n=2, image_size=8).weights == "online"
    assert validate_sample_batch(ok, expected_n=2).weights == "unknown"
    cases = [
        (SampleBatch(ok.float(), "ema"), "torch.float32"),
        (SampleBatch(ok[:, :1], "ema"), r"\(2, 1, 8, 8\)"),
        (SampleBatch(ok[:1], "ema"), "1 images for 2"),
        (SampleBatch(ok, "best"), "'best'"),
        ([ok], "list"),
    ]
    for out, needle in cases:
        with pytest.raises(SamplerOutputError, match=needle):
            validate_sample_batch(out, expected_n=2, image_size=8)
    with pytest.raises(SamplerOutputError, match="image_size is 16x16"):
        validate_sample_batch(SampleBatch(ok, "ema"), expected_n=2, image_size=16)


def test_shard_ranges_cover_every_sample_once() -> None:
    from bestckpt.evaluation.distributed import shard_range

    for n in (0, 1, 7, 8, 2500):
        for world in (1, 2, 3, 8):
            shards = [shard_range(n, r, world) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))
            assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
