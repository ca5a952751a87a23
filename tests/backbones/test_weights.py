"""Reading a weight file: one reader for every backbone, never running code, naming the file when it fails."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bestckpt.backbones.weights import WeightsError, read_state_dict


class Custom:
    """An arbitrary pickled object."""


def test_read_state_dict_plain_and_wrapped(tmp_path: Path) -> None:
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    for name in ("plain.pth", "wrapped.pth"):
        assert torch.equal(read_state_dict(tmp_path / name)["w"], state["w"])


def test_read_state_dict_unreadable_names_file_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    message = r"(?s)cannot read weight file .*bad\.pth: .*; delete it and fetch it again"
    with pytest.raises(WeightsError, match=message):
        read_state_dict(bad)
    with pytest.raises(WeightsError, match="; replace the file$"):
        read_state_dict(bad, fix="replace the file")
    torch.save({"obj": Custom()}, tmp_path / "code.pth")  # weights_only loading refuses it, never runs its code
    with pytest.raises(WeightsError, match="cannot read weight file"):
        read_state_dict(tmp_path / "code.pth")
