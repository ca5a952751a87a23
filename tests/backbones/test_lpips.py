"""LPIPS parity with the ``lpips`` package (identical random backbone weights, published lin layers), batch
invariance, size handling, loading from a weights dir and the missing-weights error."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from bestckpt.backbones import get_backbone
from bestckpt.backbones.lpips import LpipsBackbone, find_lin_weights
from bestckpt.backbones.weights import WeightsError
from bestckpt.testing.networks import random_lpips_parts, write_random_lpips_weights


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _reference_lpips(net: str, feats: torch.nn.Sequential) -> torch.nn.Module:
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    # copy our random backbone into the package's sliced copy (module names keep torchvision's indices)
    ours = feats.state_dict()
    theirs = ref.net.state_dict()
    mapped = {k: ours[k.split(".", 1)[1]] for k in theirs}
    ref.net.load_state_dict(mapped)
    return ref.eval()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_lpips_package(net: str) -> None:
    feats, _ = random_lpips_parts(net, seed=3)
    lin_path = find_lin_weights(net)  # the published v0.1 weights (shipped in lpips / torchmetrics wheels)
    from bestckpt.backbones.lpips import LPIPS_NETS, _read_lin

    ours = LpipsBackbone(net, feats, _read_lin(lin_path, LPIPS_NETS[net][2]), f"lpips-{net}", torch.device("cpu"))
    a, b = _images(3, 64, 1), _images(3, 64, 2)
    d = ours.distance(a, b)
    ref = _reference_lpips(net, feats)
    with torch.no_grad():
        expected = ref(a.float() / 127.5 - 1, b.float() / 127.5 - 1).flatten()
    assert d.shape == (3,)
    assert torch.allclose(d, expected, atol=1e-4, rtol=0)
    assert float(ours.distance(a, a).abs().max()) < 1e-6
    ours.batch_size = 1
    assert torch.allclose(ours.distance(a, b), d, atol=1e-6)


def test_lpips_pairs_and_sizes() -> None:
    backbone = get_backbone("lpips", "lpips-alex-random-test")
    a = _images(2, 64, 4)
    big = torch.nn.functional.interpolate(a.float(), size=(128, 128), mode="nearest").round().to(torch.uint8)
    d = backbone.distance(a, big)  # references of another size are resized explicitly to the generated size
    assert d.shape == (2,) and float(d.max()) < float(backbone.distance(a, a.flip(0)).max())
    with pytest.raises(ValueError, match="pairs image i with reference i"):
        backbone.distance(a, a[:1])
    with pytest.raises(ValueError, match="uint8"):
        backbone.distance(a.float(), a)


def test_lpips_loads_from_weights_dir_and_reports_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BESTCKPT_WEIGHTS_DIR", raising=False)
    backbone_path, lin_path = write_random_lpips_weights(tmp_path / "w", "alex", seed=0)
    assert find_lin_weights("alex", tmp_path / "w") == lin_path  # weights dir wins over the packaged copy
    loaded = LpipsBackbone.from_files("alex", backbone_path, lin_path)
    rt = get_backbone("lpips", "lpips-alex-random-test")
    a, b = _images(2, 64, 5), _images(2, 64, 6)
    assert torch.allclose(loaded.distance(a, b), rt.distance(a, b), atol=1e-6)
    with pytest.raises(WeightsError, match=r"alexnet-owt-7be5be79\.pth.*7be5be79.*download\.pytorch\.org"):
        get_backbone("lpips", "lpips-alex", weights_dir=tmp_path / "empty")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        LpipsBackbone.from_files("alex", tmp_path / "bad.pth", lin_path)
