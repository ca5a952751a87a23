"""FID Inception: whole feature pass vs torch-fidelity's extractor with the same (random) weight file, TF1 resize,
batch-size invariance, weight resolution / verification errors, registry and cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bestckpt.backbones import BackboneError, available_backbones, get_backbone
from bestckpt.backbones.inception import InceptionBackbone, resize_bilinear_tf1
from bestckpt.backbones.weights import INCEPTION_FID, WeightsError, resolve_weights
from bestckpt.testing.networks import spec_for_file, write_random_inception_weights


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("w"), seed=0,
                                          filename="weights-inception-2015-12-05-6726825d.pth")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 48, 64), generator=g, dtype=torch.uint8)


pytestmark = pytest.mark.usefixtures("isolated_caches")


def test_tf1_resize_matches_torch_fidelity_exactly() -> None:
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1)) * 255
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(resize_bilinear_tf1(x, 299), ref)


def test_feature_pass_matches_torch_fidelity_extractor(weight_file: Path, images: torch.Tensor) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.set_num_threads(2)
    ours = InceptionBackbone.from_file(weight_file, spec=spec_for_file(weight_file))
    feats = ours.features(images)
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(weight_file))
    with torch.no_grad():
        pool, logits = tf(images)
    assert feats["pool"].shape == (2, 2048) and feats["logits"].shape == (2, 1008)
    assert torch.allclose(feats["pool"], pool, rtol=1e-4, atol=1e-5 * float(pool.abs().max()))
    assert torch.allclose(feats["logits"], logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max()))
    assert float(pool.std()) > 0.01  # the random net is not degenerate

    # batch-size invariance (fp32 convolutions may reorder sums: tolerance, not equality)
    ours.batch_size = 1
    one = ours.features(images)
    assert torch.allclose(one["pool"], feats["pool"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(one["logits"], feats["logits"], rtol=1e-4, atol=1e-6)

    # the registered random-test net (seed 0) is the same network as the file written with seed 0
    rt = get_backbone("inception", "inception-2015-12-05-random-test")
    file_state = torch.load(weight_file, weights_only=True)
    assert all(torch.equal(v, file_state[k]) for k, v in rt.net.state_dict().items())


def test_rejects_non_uint8_input(weight_file: Path) -> None:
    backbone = get_backbone("inception", "inception-2015-12-05-random-test")
    with pytest.raises(ValueError, match="uint8"):
        backbone.features(torch.rand(1, 3, 32, 32))


def test_missing_weights_error_names_file_checksum_and_source(isolated_caches: Path) -> None:
    with pytest.raises(WeightsError) as info:
        get_backbone("inception", weights_dir=isolated_caches / "empty")
    msg = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "6726825d" in msg
    assert "github.com/mseitzer/pytorch-fid" in msg and "BESTCKPT_ALLOW_DOWNLOAD" in msg
    assert str(isolated_caches / "torch_home" / "hub" / "checkpoints") in msg


def test_wrong_or_truncated_weights_are_rejected(isolated_caches: Path, weight_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = isolated_caches / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    # a file with the right name and size but other content (here: random weights) fails the checksum
    (ckpt / INCEPTION_FID.filename).symlink_to(weight_file)
    with pytest.raises(WeightsError, match="sha256 .* expected 6726825d"):
        get_backbone("inception")
    # a truncated download fails the size check before hashing
    (ckpt / INCEPTION_FID.filename).unlink()
    (ckpt / INCEPTION_FID.filename).write_bytes(b"\0" * 1000)
    with pytest.raises(WeightsError, match="1000 bytes, expected at least"):
        resolve_weights(INCEPTION_FID)
    # an explicitly trusted re-encoding loads through the standard name (checksum skipped, warning logged)
    (ckpt / INCEPTION_FID.filename).unlink()
    (ckpt / INCEPTION_FID.filename).symlink_to(weight_file)
    monkeypatch.setenv("BESTCKPT_VERIFY_WEIGHTS", "0")
    backbone = get_backbone("inception", weights_dir=None, device="cpu")
    assert isinstance(backbone, InceptionBackbone) and backbone.name == "inception-2015-12-05"
    from bestckpt.backbones import clear_backbone_cache

    clear_backbone_cache()


def test_resolution_order_and_aliases(isolated_caches: Path, weight_file: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for_file(weight_file)
    explicit = isolated_caches / "explicit"
    explicit.mkdir()
    (explicit / weight_file.name).symlink_to(weight_file)
    env_dir = isolated_caches / "env"
    env_dir.mkdir()
    (env_dir / weight_file.name).symlink_to(weight_file)
    monkeypatch.setenv("BESTCKPT_WEIGHTS_DIR", str(env_dir))
    assert resolve_weights(spec, explicit) == explicit / weight_file.name
    assert resolve_weights(spec) == env_dir / weight_file.name
    monkeypatch.delenv("BESTCKPT_WEIGHTS_DIR")
    # the standard caches: $TORCH_HOME/hub/checkpoints, then ~/.cache/clip (OpenAI CLIP's folder)
    clip_cache = isolated_caches / "home" / ".cache" / "clip"
    clip_cache.mkdir(parents=True)
    (clip_cache / weight_file.name).symlink_to(weight_file)
    assert resolve_weights(spec) == clip_cache / weight_file.name
    hub = isolated_caches / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / weight_file.name).symlink_to(weight_file)
    assert resolve_weights(spec) == hub / weight_file.name
    # torch-fidelity's file name is an accepted alias of pytorch-fid's
    assert "weights-inception-2015-12-05-6726825d.pth" in INCEPTION_FID.names


def test_registry_cache_and_unknown_names() -> None:
    a = get_backbone("inception", "inception-2015-12-05-random-test")
    assert get_backbone("inception", "inception-2015-12-05-random-test", device=torch.device("cpu")) is a
    with pytest.raises(BackboneError, match="known: .*inception-2015-12-05-random-test"):
        get_backbone("inception", "nope")
    with pytest.raises(BackboneError, match="kind"):
        get_backbone("resnet")
    assert "inception-2015-12-05" in available_backbones("inception")
