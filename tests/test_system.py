"""The machine facts that timings and comparison summaries carry."""

from __future__ import annotations

import os

import pytest
import torch

from mwnet.system import (
    ALLOCATOR_VARIABLES,
    available_cores,
    cpu_snapshot,
    load_average,
    machine_info,
    others_cpu_share,
)


def test_others_cpu_share_subtracts_own_time():
    cores = os.cpu_count() or 1
    # 10 s of wall time; the machine was busy 10·cores·0.75 CPU-seconds, 10·cores·0.25 of them ours.
    before, after = (0.0, 100.0, 5.0), (10.0, 100.0 + 7.5 * cores, 5.0 + 2.5 * cores)
    assert others_cpu_share(before, after) == pytest.approx(0.5)
    assert others_cpu_share(None, after) is None
    assert others_cpu_share(after, after) is None
    snapshot = cpu_snapshot()
    assert snapshot is None or len(snapshot) == 3


def test_machine_info_names_threads_torch_and_cores():
    info = machine_info("cpu", 3)
    assert info["threads"] == "3" and info["torch"] == torch.__version__ and info["device"] == "cpu"
    assert info["cores"].startswith(f"{available_cores()} cores available")
    assert "gpu" not in info
    assert 1 <= available_cores() <= (os.cpu_count() or 1)
    load = load_average()
    assert load == "unknown" or float(load) >= 0


def test_the_host_allocator_settings_are_named(monkeypatch):
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert machine_info("cpu", 1)["allocator"] == "the C library's malloc, default settings"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=4294967296")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert machine_info("cpu", 1)["allocator"] == ("LD_PRELOAD=/usr/lib/libjemalloc.so.2, "
                                                   "GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296")
