"""Checkpoint files (store/models.py): a damaged file is named and rebuilt with --force, a bug
is not disguised as one, a full disk is one line naming the path with nothing half-written."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from pipeline.errors import MissingArtifact, StaleArtifact, StoreWriteError
from store import models


def _saved(tmp_path):
    path = tmp_path / "head" / "final.pt"
    models.save_checkpoint(path, {"state_dict": {"w": torch.arange(1000.0)}, "epoch": 3})
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "text"])
def test_damaged_checkpoint_is_stale_with_the_path(tmp_path, damage):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                      "garbage": bytes(range(256)) * 3, "text": b"hello world\n"}[damage])
    with pytest.raises(StaleArtifact, match=rf"cannot read checkpoint {path}.*--force"):
        models.read_checkpoint(path)


def test_checkpoint_round_trip_and_missing_file(tmp_path):
    path = _saved(tmp_path)
    blob = models.read_checkpoint(path)
    assert blob["epoch"] == 3 and torch.equal(blob["state_dict"]["w"], torch.arange(1000.0))
    with pytest.raises(MissingArtifact, match="does not exist"):
        models.read_checkpoint(tmp_path / "nope.pt")


def test_a_bug_while_loading_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)

    def buggy(*a, **k):
        raise TypeError("load() got an unexpected keyword argument 'mmap_mode'")

    monkeypatch.setattr(models.torch, "load", buggy)
    with pytest.raises(TypeError, match="mmap_mode"):
        models.read_checkpoint(path)


def test_permission_error_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(models.torch, "load", denied)
    with pytest.raises(PermissionError):  # the command line says it in one line, as storage
        models.read_checkpoint(path)


def test_disk_full_while_saving_is_one_line_and_nothing_half_written(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):  # the first write lands partly, the next finds the disk full
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:100]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StoreWriteError) as e:
        models.save_checkpoint(path, {"state_dict": {"w": torch.zeros(5000)}, "epoch": 4})
    monkeypatch.undo()
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "No space left" in message
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["final.pt"]  # no temporary left
