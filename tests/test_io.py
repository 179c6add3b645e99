"""gluon_rcnn.utils.io: atomic_write leaves the old file or the new one, never half of one, and no
temporary file; save_torch/load_checkpoint round-trip and refuse pickled code."""
from __future__ import annotations

import os
import pickle
import stat

import pytest
import torch

from gluon_rcnn.utils.io import atomic_write, load_checkpoint, save_torch


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with atomic_write(path) as f:
        f.write("new")
        assert path.read_text() == "old"  # nothing visible before the rename
        temps = [p for p in os.listdir(tmp_path) if p != "out.json"]
        assert len(temps) == 1 and temps[0].startswith(".out.json.") and temps[0].endswith(".tmp")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_keeps_the_old_file_on_an_error(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("killed half way")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # the temporary file is gone
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "never.txt") as f:
            raise RuntimeError
    assert not (tmp_path / "never.txt").exists()


def test_atomic_write_modes_and_permissions(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "p.txt", newline="") as f:
            f.write("a\r\nb")
    finally:
        os.umask(old)
    assert (tmp_path / "p.txt").read_bytes() == b"a\r\nb"
    assert stat.S_IMODE((tmp_path / "p.txt").stat().st_mode) == 0o644  # as open() would make it


def test_save_torch_and_load_checkpoint(tmp_path):
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 7, "name": "x"}
    save_torch(obj, tmp_path / "c.pth")
    back = load_checkpoint(tmp_path / "c.pth")
    assert back["iteration"] == 7 and back["name"] == "x" and torch.equal(back["model"]["w"], obj["model"]["w"])
    assert os.listdir(tmp_path) == ["c.pth"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_checkpoint_runs_no_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
