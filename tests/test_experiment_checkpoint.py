"""Atomic checkpoints: round trip, a crash mid-write leaves the old file, unreadable files are one-line errors,
and the random state survives a save/load (so draws after a resume are the draws of an uninterrupted run)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mwnet.experiment import checkpoint as ckpt


def test_round_trip_with_optimizer_scheduler_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4])
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": ckpt.rng_state(), "epoch": 3, "nested": {"values": [1.5, None, "x"]}}
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(state, path)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["nested"] == {"values": [1.5, None, "x"]}
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["scheduler"]["milestones"] == scheduler.state_dict()["milestones"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_rng_state_restores_every_generator():
    state = ckpt.rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn()))
    random.random(), np.random.rand(5), torch.rand(5)  # move every generator on
    ckpt.set_rng_state(state)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn()))
    assert again == first


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint({"epoch": 1}, path)

    def torn_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_unreadable_or_missing_checkpoints_are_one_line_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.load_checkpoint(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=r"^unreadable checkpoint .*checkpoint.pt") as info:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(info.value)
    ckpt.save_checkpoint([1, 2], path)
    with pytest.raises(ValueError, match="not an mwnet checkpoint"):
        ckpt.load_checkpoint(path)
