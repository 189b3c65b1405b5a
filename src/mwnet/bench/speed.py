"""`run_speed_benchmark`: time every method on every model in one process, then profile the phases of one model.

Everything is measured in one process so that every figure can be read as a ratio to plain CE training measured
beside it; the prose that says how lives in speed_template.md. A peer row whose package does not import is left
out of the tables and named in the report with the reason.
"""

from __future__ import annotations

import datetime
import gc
from collections.abc import Callable

import torch

from mwnet import models
from mwnet.bench.config import MODEL_INPUTS, SpeedConfig
from mwnet.bench.peers import PEERS, unavailable, version
from mwnet.bench.profile import profile_phases
from mwnet.bench.report import ModelResult, PeerNote, PhaseProfile, SpeedReport, summarize
from mwnet.bench.runners import build_runners, method_label, random_batches
from mwnet.bench.timing import ieee_float32, peak_memory, time_runners
from mwnet.system import available_cores, cpu_snapshot, load_average, machine_info, others_cpu_share


def run_speed_benchmark(config: SpeedConfig, *, command: str = "",
                        progress: Callable[[str], None] | None = None) -> SpeedReport:
    """Time every method of `config` on every model; profile the phases of `config.profile_model`."""
    config.validate()
    device = torch.device(config.device)
    threads = config.threads or available_cores()
    say = progress or (lambda _msg: None)
    peers = []
    for method in [m for m in config.methods if m in PEERS]:
        note = unavailable(method)
        peers.append(PeerNote(method, method_label(method), None if note else version(method),
                              note or PEERS[method].semantics))
        if note:
            say(f"{method}: skipped ({note})")
    skipped = {p.method for p in peers if p.version is None}
    methods = ("ce", *[m for m in config.methods if m != "ce" and m not in skipped])
    load_start = load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ieee_float32(device):
            results, profiles = _measure(config, methods, device, say)
    finally:
        torch.set_num_threads(previous_threads)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine_info(config.device, threads)
    info["load"] = f"{load_start} at the start, {load_average()} at the end"
    return SpeedReport(config, info, command, date, results, profiles, peers)


def _measure(config: SpeedConfig, methods: tuple[str, ...], device: torch.device,
             say: Callable[[str], None]) -> tuple[list[ModelResult], list[PhaseProfile]]:
    """The tables of every model and the phase profile, with the threads and float32 mode already set."""
    results = []
    profiles: list[PhaseProfile] = []
    for name in config.models:
        channels, side = MODEL_INPUTS[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = models.create(name, in_channels=channels, num_classes=10, input_size=side).to(device)
        batches = random_batches(channels, side, config.batch_size, config.meta_batch_size or config.batch_size,
                                 seed=config.seed, device=device)
        runners = build_runners(model, batches, methods=methods, interval=config.interval, seed=config.seed,
                                precision=config.precision)
        gc.collect()
        before = cpu_snapshot()
        times = time_runners(runners, steps=config.steps, warmup=config.warmup, device=device,
                             progress=lambda msg, name=name: say(f"{name}: {msg}"))
        others = others_cpu_share(before, cpu_snapshot())
        memory = {}
        if config.memory:
            say(f"{name}: peak memory")
            memory = {method: peak_memory(runner.step, device) for method, runner in runners.items()}
        del runners
        results.append(summarize(name, model, (channels, side, side), times, memory, interval=config.interval))
        results[-1].others_cpu = others
        if config.profile_model == name:
            say(f"{name}: phase profile")
            profiles = profile_phases(model, batches, model_name=name, steps=config.profile_steps,
                                      warmup=min(config.warmup, 2), device=device, seed=config.seed,
                                      precision=config.precision)
    return results, profiles
