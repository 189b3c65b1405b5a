"""Interleaved timing runs every method once per round in a rotated order; the memory probe sees live bytes."""

from __future__ import annotations

import torch

from mwnet.bench.runners import Runner
from mwnet.bench.timing import ieee_float32, peak_memory, time_runners


def test_time_runners_interleaves_in_rotated_rounds():
    log: list[str] = []

    def runner(name: str, calls: int = 1) -> Runner:
        return Runner(name, torch.nn.Linear(1, 1), None, None, None, lambda: log.append(name), calls)  # type: ignore[arg-type]

    times = time_runners({"a": runner("a"), "b": runner("b"), "c": runner("c", calls=4)}, steps=3, warmup=1)
    assert log == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_peak_memory_counts_live_tensor_bytes():
    n = 250_000  # float32: 1e6 bytes

    def together():
        a = torch.ones(n)
        b = torch.ones(n)
        return float(a[0] + b[0])

    def one_after_another():
        for _ in range(3):
            a = torch.ones(n)
            del a

    assert 2_000_000 <= peak_memory(together) < 2_010_000
    assert 1_000_000 <= peak_memory(one_after_another) < 1_010_000


def test_ieee_float32_turns_tf32_off_on_cuda_only_and_restores_it():
    # The flags exist (and can be set) in CPU builds too, so the CUDA branch is checked without a GPU.
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [f.allow_tf32 for f in flags]
    with ieee_float32("cpu"):
        assert [f.allow_tf32 for f in flags] == before
    try:
        torch.backends.cudnn.allow_tf32 = True
        with ieee_float32("cuda"):
            assert [f.allow_tf32 for f in flags] == [False, False]
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        for f, value in zip(flags, before):
            f.allow_tf32 = value
