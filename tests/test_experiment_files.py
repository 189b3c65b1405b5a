"""Durable writes: an OSError names the file it could not write and leaves the old file and no temporary one, and
JSON is always standard (no NaN, no Infinity)."""

from __future__ import annotations

import errno
import os

import pytest

from mwnet.experiment import files


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    files.write_json(path, {"epoch": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        files.write_json(path, {"epoch": 2})
    with pytest.raises(OSError) as appended:
        files.append_line(tmp_path / "metrics.jsonl", "{}")
    monkeypatch.undo()
    assert files.os_error_line(info.value) == f"{path}: No space left on device"
    assert files.os_error_line(appended.value) == f"{tmp_path / 'metrics.jsonl'}: No space left on device"
    assert files.read_json_object(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
    assert files.os_error_line(FileNotFoundError("no such run directory: x")) == "no such run directory: x"


def test_json_is_standard(tmp_path):
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="not JSON compliant"):
            files.write_json(tmp_path / "config.json", {"lr": value})
    assert list(tmp_path.iterdir()) == []
