"""Facts about the machine a run or a timing happened on: cores, CPU model, load, other processes' CPU use.

Read by `mwnet compare` (summary files) and by the speed benchmark (report header); nothing here imports the
benchmark.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

import torch


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info(device: str, threads: int) -> dict[str, str]:
    """The facts a reader needs to compare timings: CPU model, cores, torch, threads, GPU."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": f"{available_cores()} cores available to the process ({os.cpu_count()} logical CPUs on the host)",
        "torch": torch.__version__,
        "threads": str(threads),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": device,
        "allocator": host_allocator(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: Environment variables that change how host memory is allocated (an allocator preloaded, glibc's malloc tuned).
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                       "MALLOC_TRIM_THRESHOLD_")


def allocator_settings() -> list[str]:
    """The allocator variables this process runs under, as NAME=VALUE (empty when none is set)."""
    return [f"{name}={os.environ[name]}" for name in ALLOCATOR_VARIABLES if os.environ.get(name)]


def host_allocator() -> str:
    """How host memory is allocated: CPU timings depend on it (docs/performance.md, "The CPU allocator")."""
    return ", ".join(allocator_settings()) or "the C library's malloc, default settings"


def load_average() -> str:
    """The host's 1-minute load average: on a shared machine, the context every timing needs."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait (steal counts as busy:
    # on a virtual machine it is time another guest took from us).
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_cpu_share(before: tuple[float, float, float] | None,
                     after: tuple[float, float, float] | None) -> float | None:
    """Share of the machine's CPU capacity used by other processes between two `cpu_snapshot`s."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    wall = after[0] - before[0]
    others = (after[1] - before[1]) - (after[2] - before[2])
    return min(max(others / (wall * (os.cpu_count() or 1)), 0.0), 1.0)
