"""Where the time goes: the phase table, read from the `record_function` marks inside the real steps.

`MetaReweighter.step` marks its phases (`mwnet.step.STEP_PHASES`) and `official_step` marks its own
(`mwnet.reference.OFFICIAL_PHASES`); nothing is re-enacted here. Each profiled step runs under torch.profiler, and a
phase's time is the sum, within that step, of its mark's events: on CPU their wall time, on CUDA the GPU time of the
kernels launched while the mark was open. The marks are not nested in each other, so the phases partition the step.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from mwnet.bench.report import PhaseProfile
from mwnet.bench.runners import build_runners
from mwnet.bench.timing import quiet_native_stderr, synchronize, time_call
from mwnet.reference import OFFICIAL_PHASES
from mwnet.step import STEP_PHASES

# The profiled rows and the marks their steps carry.
PROFILED: tuple[tuple[str, tuple[str, ...]], ...] = (("forward", STEP_PHASES), ("official", OFFICIAL_PHASES))
TOP_OPS = 8


def phase_times(events: Iterable, phases: Sequence[str], device: torch.device) -> dict[str, float]:
    """Milliseconds per mark in one profiled step, for the marks in `phases` that occurred.

    `events` are torch.profiler's FunctionEvents (anything with name, device_type, time_range, kernels). On CPU a
    mark's time is the wall time of its range; on CUDA it is the duration of the kernels whose launching operator
    started inside the range, whatever thread launched it (the autograd engine runs backward on its own thread).
    """
    events = list(events)
    cpu = torch.autograd.DeviceType.CPU
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                    if e.name in phases and e.device_type == cpu)
    totals = {name: 0.0 for _, _, name in ranges}
    if device.type != "cuda":
        for start, end, name in ranges:
            totals[name] += (end - start) / 1e3
        return totals
    starts = [start for start, _, _ in ranges]
    for e in events:
        if e.device_type != cpu or not e.kernels or e.name in phases:
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        if i >= 0 and e.time_range.start < ranges[i][1]:
            totals[ranges[i][2]] += sum(k.duration for k in e.kernels) / 1e3
    return totals


def profile_step(fn: Callable[[], None], phases: Sequence[str],
                 device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Run `fn` once under torch.profiler: (ms per mark, self ms per operator).

    The operators leave out every `record_function` range (the phase marks, torch's `Optimizer.step#…`): their
    self time is the Python between the operators inside them, not an operator's work.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    with quiet_native_stderr():  # kineto writes to fd 2 when it starts and stops
        prof.start()
    try:
        fn()
        synchronize(device)
    finally:
        with quiet_native_stderr():
            prof.stop()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = {e.key: getattr(e, attr) / 1e3 for e in prof.key_averages()
           if e.key not in phases and not e.is_user_annotation}
    return phase_times(prof.events(), phases, device), ops


def profile_phases(model: nn.Module, batches: tuple[Tensor, Tensor, Tensor, Tensor], *, model_name: str,
                   steps: int, warmup: int, device: torch.device | str = "cpu", seed: int = 0,
                   precision: str = "fp32") -> list[PhaseProfile]:
    """Phase tables of mwnet's default step and of the official step, with the whole step timed beside them.

    Every round times one step plainly (no profiler) and profiles the next, so the phases can be checked against
    the real step's time. The default mode also gets its top operators by self time over the profiled steps.
    """
    device = torch.device(device)
    runners = build_runners(model, batches, methods=[method for method, _ in PROFILED], seed=seed,
                            precision=precision)
    profiles = []
    for method, phases in PROFILED:
        step = runners[method].step
        for _ in range(warmup):
            step()
        samples: list[dict[str, float]] = []
        step_times: list[float] = []
        op_ms: dict[str, float] = {}
        for _ in range(steps):
            step_times.append(time_call(step, device))
            times, ops = profile_step(step, phases, device)
            samples.append(times)
            for name, ms in ops.items():
                op_ms[name] = op_ms.get(name, 0.0) + ms
        seen = [p for p in phases if any(p in s for s in samples)]
        table = [(p, statistics.median([s.get(p, 0.0) for s in samples])) for p in seen]
        profile = PhaseProfile(method, model_name, steps, table, statistics.median(step_times) * 1e3)
        if method == "forward":
            profile.top_ops = _top_ops(op_ms, steps)
        profiles.append(profile)
    return profiles


def _top_ops(op_ms: dict[str, float], steps: int) -> list[tuple[str, float, float]]:
    """The TOP_OPS operators with the most self time: (name, ms per step, share of all operators' self time)."""
    total = sum(op_ms.values()) or 1.0
    ranked = sorted(op_ms.items(), key=lambda item: item[1], reverse=True)[:TOP_OPS]
    return [(name, ms / steps, ms / total) for name, ms in ranked]
