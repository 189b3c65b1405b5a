"""Measuring the runners: interleaved wall-clock timing and the peak tensor memory of one step."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch

from mwnet.bench.runners import Runner


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a clock read after it sees the work done (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def ieee_float32(device: torch.device | str) -> Iterator[None]:
    """On CUDA, float32 matmuls and cuDNN convolutions in full float32 (TF32 off) for a block, then as they were.

    PyTorch's default lets cuDNN run float32 convolutions in TF32 on Ampere and later GPUs; a table that says
    float32 should mean it. The flags are the long-standing `allow_tf32` ones (reading them after a mix with
    torch's newer `fp32_precision` API raises, so only one API is used). No-op on CPU.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def time_runners(runners: dict[str, Runner], *, steps: int, warmup: int, device: torch.device | str = "cpu",
                 progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per training iteration of every runner, `steps` samples each, interleaved in rounds.

    Each round runs every method once, in an order rotated by one every round, so that drift on a shared machine
    (and any after-effect of the previous method on caches) falls on all methods alike. A runner with calls = k
    contributes (time of k iterations) / k.
    """
    device = torch.device(device)
    order = list(runners)
    times: dict[str, list[float]] = {name: [] for name in order}
    for round_index in range(warmup + steps):
        rotation = order[round_index % len(order):] + order[:round_index % len(order)]
        for name in rotation:
            runner = runners[name]
            elapsed = time_call(runner.step, device)
            if round_index >= warmup:
                times[name].append(elapsed / runner.calls)
        if progress is not None:
            kind = "warm-up" if round_index < warmup else "timed"
            progress(f"round {round_index + 1}/{warmup + steps} ({kind})")
    return times


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one `fn()`, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensor memory allocated while `fn()` runs, above what was allocated when it started.

    CUDA: torch.cuda.max_memory_allocated after a reset, minus memory_allocated before. CPU: the c10 allocator's
    allocation and free events recorded by torch.profiler (profile_memory=True), summed in time order; frees of
    tensors allocated before `fn` started (e.g. the previous step's gradients) are not recorded, so the CPU figure
    can exceed the CUDA one by up to their size. Memory that bypasses the tensor allocator (e.g. oneDNN scratch
    space, Python objects) is not counted.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # Native code writes to fd 2 here: kineto when it starts and stops, c10 when a block allocated before the
    # profiler is freed (that free is not recorded; see the docstring).
    with quiet_native_stderr():
        prof.start()
        try:
            fn()
        finally:
            prof.stop()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return int(peak)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a block (native libraries write there directly, past sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
