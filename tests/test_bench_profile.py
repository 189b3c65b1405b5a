"""The phase table is read from the marks inside the real steps (mwnet.core, mwnet.reference), not re-enacted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench_fixtures import tiny_batches, tiny_model
from mwnet.bench.profile import phase_times, profile_phases
from mwnet.reference import OFFICIAL_PHASES
from mwnet.step import STEP_PHASES

CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def event(name: str, start: float, end: float, *, device=CPU, kernels: tuple[float, ...] = ()) -> SimpleNamespace:
    """A stand-in for torch.profiler's FunctionEvent: times in µs, kernel durations in µs."""
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end),
                           kernels=[SimpleNamespace(duration=d) for d in kernels])


def test_cpu_phase_time_is_the_wall_time_of_its_marks():
    events = [event("a", 0, 1000), event("aten::mm", 100, 900), event("b", 1000, 3500), event("a", 4000, 4500),
              event("b", 3500, 3600, device=CUDA)]  # a device-side copy of a mark is not a second range
    assert phase_times(events, ("a", "b", "c"), torch.device("cpu")) == pytest.approx({"a": 1.5, "b": 2.5})


def test_cuda_phase_time_is_the_kernel_time_launched_inside_each_mark():
    events = [
        event("a", 0, 1000, kernels=(7000.0,)),  # a mark's own (aggregated) kernels are not counted again
        event("aten::mm", 100, 200, kernels=(300.0, 200.0)),
        event("b", 1000, 3000),
        event("aten::add", 1000, 1010, kernels=(50.0,)),  # starts where b starts: b's
        event("autograd::engine::mm_backward", 2500, 2600, kernels=(400.0,)),  # another thread, inside b
        event("aten::mul", 3000, 3100, kernels=(1000.0,)),  # after every mark: nobody's
        event("aten::sum", 1500, 1600),  # no kernel
        event("b", 1200, 2200, device=CUDA),
        event("c", 5000, 6000),  # marked but launched nothing
    ]
    times = phase_times(events, ("a", "b", "c"), torch.device("cuda"))
    assert times == pytest.approx({"a": 0.5, "b": 0.45, "c": 0.0})


def test_phase_tables_come_from_the_real_steps():
    profiles = profile_phases(tiny_model(), tiny_batches(), model_name="cnn", steps=2, warmup=1)
    assert [(p.method, p.model, p.steps) for p in profiles] == [("forward", "cnn", 2), ("official", "cnn", 2)]
    forward, official = profiles
    assert [name for name, _ in forward.phases] == list(STEP_PHASES)  # the default mode passes every mark
    assert [name for name, _ in official.phases] == list(OFFICIAL_PHASES)
    for profile in profiles:
        assert all(ms > 0 for _, ms in profile.phases) and profile.step_median_ms > 0
    marks = set(STEP_PHASES) | set(OFFICIAL_PHASES)
    top_ops = forward.top_ops
    assert len(top_ops) == 8 and all(ms > 0 and 0 < share <= 1 for _, ms, share in top_ops)
    assert [share for *_, share in top_ops] == sorted((share for *_, share in top_ops), reverse=True)
    assert not marks & {name for name, _, _ in top_ops}
    assert not any(name.startswith("Optimizer.step") for name, _, _ in top_ops)  # a range, not an operator
    assert official.top_ops == []
