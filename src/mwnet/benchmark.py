"""Speed benchmark: step time and peak memory of plain CE, the official algorithm and every mwnet mode.

Everything is measured in one process so that every figure can be read as a ratio to plain CE training measured
beside it. The official Meta-Weight-Net step is written here as the yardstick (`official_step`); the mwnet modes
are timed through the public `MetaReweighter`. `forward_mode_phases` re-enacts the default mode phase by phase,
so that the report can say where the time goes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mwnet import models
from mwnet.core import MetaReweighter, normalize_weights
from mwnet.weighting import MetaWeightNet

# The rows of every table, in order. "interval" is meta_interval=k with the default (forward) hypergradient;
# "last-layer-interval" combines the two fast modes (last-layer hypergradient every k-th step).
METHODS: tuple[str, ...] = ("ce", "official", "forward", "double-backward", "finite-difference", "last-layer",
                            "interval", "last-layer-interval")
_MWNET_MODES = ("forward", "double-backward", "finite-difference", "last-layer")

# Input shape (channels, side) each benchmarked model is timed at; wrn28_10 joins the defaults only on CUDA.
MODEL_INPUTS: dict[str, tuple[int, int]] = {"cnn": (1, 28), "resnet32": (3, 32), "wrn28_10": (3, 32)}
DEFAULT_MODELS: tuple[str, ...] = ("cnn", "resnet32")
GPU_MODELS: tuple[str, ...] = ("wrn28_10",)

# The speed targets of issue 5, stated for ResNet-32 on 2 CPU cores (ratios measured in one run).
TARGET_EXACT_VS_CE = 2.2
TARGET_OFFICIAL_VS_EXACT = 1.5
TARGET_FAST_VS_CE = 1.25

# Optimiser settings of the official noisy-label scripts (PAPER.md): the same for every method.
CLASSIFIER_SGD = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
WEIGHT_NET_SGD = {"lr": 1e-3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def method_label(method: str, interval: int = 5) -> str:
    """The row name of `method` in the tables."""
    labels = {
        "ce": "plain CE training",
        "official": "official algorithm (yardstick)",
        "forward": "mwnet forward (default)",
        "double-backward": "mwnet double-backward",
        "finite-difference": "mwnet finite-difference",
        "last-layer": "mwnet last-layer",
        "interval": f"mwnet meta_interval={interval} (forward)",
        "last-layer-interval": f"mwnet last-layer, meta_interval={interval}",
    }
    return labels[method]


def method_kind(method: str) -> str:
    """What hypergradient the method computes: the column that keeps fast rows from passing as exact ones."""
    return {"ce": "none", "official": "exact (2nd-order backward)", "forward": "exact (forward-mode)",
            "double-backward": "exact (2nd-order backward)", "finite-difference": "approximate",
            "last-layer": "approximate (last layer)", "interval": "exact, every k-th step",
            "last-layer-interval": "approximate, every k-th step"}[method]


@dataclass
class SpeedConfig:
    """What `run_speed_benchmark` measures.

    Attributes:
        models: model names (keys of MODEL_INPUTS) [cnn, resnet32].
        methods: rows to time; "ce" is always timed, since every figure is a ratio to it [all of METHODS].
        batch_size: train batch size [100].
        meta_batch_size: meta batch size [batch_size].
        steps: timed rounds (one step of every method per round) [15].
        warmup: untimed rounds before them [5].
        interval: k of the meta_interval row; that row is timed over whole cycles of k steps [5].
        device: "cpu" or "cuda" (resolve "auto" with `resolve_device` first) ["cpu"].
        threads: torch intra-op threads [the cores this process may use].
        seed: seed of the model initialisation and the random batches [0].
        memory: measure peak memory in a separate pass after the timing [True].
        profile_model: model whose default-mode step is broken into phases, or None [resnet32].
        profile_steps: timed repetitions of the phase profile [5].
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    methods: tuple[str, ...] = METHODS
    batch_size: int = 100
    meta_batch_size: int | None = None
    steps: int = 15
    warmup: int = 5
    interval: int = 5
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    memory: bool = True
    profile_model: str | None = "resnet32"
    profile_steps: int = 5

    def validate(self) -> None:
        """Raise ValueError naming the first bad value; call before any output is written."""
        known = set(MODEL_INPUTS) & set(models.list_models())
        if not self.models:
            raise ValueError("no model to benchmark")
        for name in self.models:
            if name not in known:
                raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(sorted(known))}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models repeated: {', '.join(self.models)}")
        for method in self.methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for what, value, low in (("batch size", self.batch_size, 1), ("steps", self.steps, 1),
                                 ("warm-up steps", self.warmup, 0), ("interval", self.interval, 1),
                                 ("seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
        for what, value in (("meta batch size", self.meta_batch_size), ("threads", self.threads),
                            ("profile steps", self.profile_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if self.profile_model is not None and self.profile_model not in known:
            raise ValueError(f"unknown profile model {self.profile_model!r}; choose from {', '.join(sorted(known))}")


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when available, else "cpu"; other values pass through (checked by `SpeedConfig`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------------------
# The yardstick: the official algorithm, and a phase-by-phase re-enactment of mwnet's default mode.
# --------------------------------------------------------------------------------------------------------------


class PhaseClock:
    """Accumulates wall time between `mark` calls under phase names (synchronising CUDA at every mark)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.totals: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        _synchronize(self.device)
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        _synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self._last
        self._last = now


class _NoClock:
    """Stands in for PhaseClock in timed runs: marks cost one method call and no synchronisation."""

    def start(self) -> None:
        pass

    def mark(self, phase: str) -> None:
        pass


def official_step(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                  weight_optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor,
                  *, normalize: str = "mean", clock: PhaseClock | None = None) -> float:
    """One iteration of the authors' Meta-Weight-Net script, as the yardstick; returns the meta loss.

    A fresh copy of the model per step, the virtual step differentiated with create_graph, the meta loss
    backpropagated (second order) into Θ, then a second forward of the real model for the weighted update.
    The only departure: the meta forward at ŵ uses `torch.func.functional_call` instead of layers rewritten as
    `MetaModule`s (same arithmetic, no per-layer Python overhead, so if anything it flatters the yardstick).
    """
    clock = clock or _NoClock()
    clock.start()
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    meta_model = copy.deepcopy(model)
    clock.mark("copy the model")
    losses = F.cross_entropy(meta_model(x), y, reduction="none")
    clock.mark("virtual forward (on the copy)")
    weights = normalize_weights(weight_net(losses.detach()), normalize)
    names = [k for k, p in meta_model.named_parameters() if p.requires_grad]
    params = [p for _, p in meta_model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad((weights * losses).sum(), params, create_graph=True)
    virtual = {k: p - lr * g for k, p, g in zip(names, params, grads)}
    clock.mark("virtual backward (create_graph)")
    meta_loss = F.cross_entropy(functional_call(meta_model, virtual, (x_meta,), strict=False), y_meta)
    clock.mark("meta forward at ŵ")
    weight_optimizer.zero_grad()
    # As in the original, .backward() also fills the copy's own leaf gradients: work the algorithm does not need.
    meta_loss.backward()
    clock.mark("second-order backward")
    weight_optimizer.step()
    clock.mark("weight-net step")
    losses = F.cross_entropy(model(x), y, reduction="none")  # the second forward; moves the BN statistics once
    clock.mark("second forward (real model)")
    with torch.no_grad():
        new_weights = normalize_weights(weight_net(losses.detach()), normalize)
    optimizer.zero_grad()
    (new_weights * losses).sum().backward()
    optimizer.step()
    clock.mark("real backward + optimizer step")
    return float(meta_loss.detach())


def forward_mode_phases(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                        weight_optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, x_meta: Tensor,
                        y_meta: Tensor, *, normalize: str = "mean", clock: PhaseClock | None = None) -> float:
    """mwnet's default step (hypergradient="forward", no dropout) re-enacted with a clock between its phases.

    Same calls as `MetaReweighter.step` in mwnet.core (tests hold the two to the same update); returns the
    meta loss. Used only to say where the time goes.
    """
    clock = clock or _NoClock()
    clock.start()
    model.train()
    snapshot = {k: b.detach().clone() for k, b in model.named_buffers()}
    names_by_id = {id(p): k for k, p in model.named_parameters()}
    params = {names_by_id[id(p)]: p for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    lrs = {names_by_id[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    scratch = {k: b.clone() for k, b in snapshot.items()}
    losses = F.cross_entropy(functional_call(model, scratch, (x,), strict=False), y, reduction="none")
    clock.mark("first forward (train batch)")
    weights = normalize_weights(weight_net(losses.detach()), normalize)
    clock.mark("weight-net forward")
    names = list(params)
    grads = torch.autograd.grad((weights.detach() * losses).sum(), [params[k] for k in names], retain_graph=True)
    virtual = {k: (params[k].detach() - lrs[k] * g).requires_grad_(True) for k, g in zip(names, grads)}
    clock.mark("virtual backward (ŵ)")
    meta_buffers = {k: b.clone() for k, b in snapshot.items()}
    meta_loss = F.cross_entropy(functional_call(model, {**virtual, **meta_buffers}, (x_meta,), strict=False),
                                y_meta)
    meta_grads = torch.autograd.grad(meta_loss, [virtual[k] for k in names])
    clock.mark("meta forward + backward at ŵ")
    direction = {k: lrs[k] * g for k, g in zip(names, meta_grads)}
    dual_buffers = {k: b.clone() for k, b in snapshot.items()}
    with fwAD.dual_level(), warnings.catch_warnings():
        # torch's first forward-AD call scripts its jvp decompositions and warns that torch.jit is deprecated.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        dual = {k: fwAD.make_dual(params[k].detach(), direction[k]) for k in names}
        dual_losses = F.cross_entropy(functional_call(model, {**dual, **dual_buffers}, (x,), strict=False), y,
                                      reduction="none")
        tangent = fwAD.unpack_dual(dual_losses).tangent.detach()
    clock.mark("dual (forward-mode) pass, train batch")
    theta = [p for p in weight_net.parameters() if p.requires_grad]
    # ∂L_meta/∂ṽᵢ = −sᵢ, backpropagated through V alone.
    hyper = torch.autograd.grad(weights, theta, grad_outputs=-tangent)
    for p, g in zip(theta, hyper):
        p.grad = g
    weight_optimizer.step()
    clock.mark("weight-net backward + step")
    with torch.no_grad():
        new_weights = normalize_weights(weight_net(losses.detach()), normalize)
    optimizer.zero_grad()
    (new_weights * losses).sum().backward()
    optimizer.step()
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(scratch[k])
    clock.mark("real backward + optimizer step")
    return float(meta_loss.detach())


# --------------------------------------------------------------------------------------------------------------
# Runners: one closure per method, each over its own copy of the same model.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Runner:
    """One method ready to time: `step()` performs `calls` training iterations (k for the interval row)."""

    method: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    weight_net: nn.Module | None
    weight_optimizer: torch.optim.Optimizer | None
    step: Callable[[], None]
    calls: int = 1
    reweighter: MetaReweighter | None = None


def build_runners(model: nn.Module, batches: tuple[Tensor, Tensor, Tensor, Tensor], *,
                  methods: Sequence[str] = METHODS, interval: int = 5, seed: int = 0) -> dict[str, Runner]:
    """A runner per method, each with a deep copy of `model`, its own optimizers and the same weight net."""
    x, y, x_meta, y_meta = batches
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        weight_net = MetaWeightNet(hidden=100).to(device=device, dtype=dtype)
    runners: dict[str, Runner] = {}
    for method in methods:
        net = copy.deepcopy(model).train()
        opt = torch.optim.SGD(net.parameters(), **CLASSIFIER_SGD)
        if method == "ce":
            def ce_step(net=net, opt=opt) -> None:
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            runners[method] = Runner(method, net, opt, None, None, ce_step)
            continue
        wnet = copy.deepcopy(weight_net)
        wopt = torch.optim.SGD(wnet.parameters(), **WEIGHT_NET_SGD)
        if method == "official":
            def yardstick(net=net, opt=opt, wnet=wnet, wopt=wopt) -> None:
                official_step(net, opt, wnet, wopt, x, y, x_meta, y_meta)

            runners[method] = Runner(method, net, opt, wnet, wopt, yardstick)
            continue
        mode = {"interval": "forward", "last-layer-interval": "last-layer"}.get(method, method)
        if mode not in _MWNET_MODES:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        periodic = method in ("interval", "last-layer-interval")
        rw = MetaReweighter(net, opt, wnet, wopt, hypergradient=mode, meta_interval=interval if periodic else 1)

        def mwnet_step(rw=rw) -> None:
            rw.step(x, y, x_meta, y_meta)

        calls = interval if periodic else 1
        runners[method] = Runner(method, net, opt, wnet, wopt, _repeat(mwnet_step, calls), calls, rw)
    return runners


def _repeat(fn: Callable[[], None], times: int) -> Callable[[], None]:
    if times == 1:
        return fn

    def repeated() -> None:
        for _ in range(times):
            fn()

    return repeated


def random_batches(in_channels: int, side: int, batch_size: int, meta_batch_size: int, *, num_classes: int = 10,
                   seed: int = 0, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed random train batch and meta batch (standard-normal images, uniform labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_channels, side, side, generator=g, dtype=dtype)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    xm = torch.randn(meta_batch_size, in_channels, side, side, generator=g, dtype=dtype)
    ym = torch.randint(0, num_classes, (meta_batch_size,), generator=g)
    return tuple(t.to(device) for t in (x, y, xm, ym))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Measuring: interleaved timing, peak memory.
# --------------------------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            _synchronize(device)
            start = time.perf_counter()
            runner.step()
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed / runner.calls)
        if progress is not None:
            kind = "warm-up" if round_index < warmup else "timed"
            progress(f"round {round_index + 1}/{warmup + steps} ({kind})")
    return times


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
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # Native code writes to fd 2 here: kineto when it starts and stops, c10 when a block allocated before the
    # profiler is freed (that free is not recorded; see the docstring).
    with _quiet_native_stderr():
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
def _quiet_native_stderr() -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MethodResult:
    method: str
    label: str
    hypergradient: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    ratio_to_ce: float
    peak_memory_mib: float | None
    times_ms: list[float]


@dataclass
class ModelResult:
    model: str
    input_shape: tuple[int, int, int]
    parameters: int
    methods: list[MethodResult]
    others_cpu: float | None = None  # share of the machine's CPU time other processes used during the timing

    def row(self, method: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == method), None)


@dataclass
class TargetCheck:
    target: str
    model: str
    value: float | None
    bound: float
    met: bool | None
    detail: str


@dataclass
class PhaseProfile:
    """Median milliseconds per phase of one step, and the median of the whole step timed the ordinary way."""

    method: str
    model: str
    steps: int
    phases: list[tuple[str, float]]
    step_median_ms: float
    top_ops: list[tuple[str, float, float]] = field(default_factory=list)  # (operator, ms per step, share)


@dataclass
class SpeedReport:
    config: SpeedConfig
    machine: dict[str, str]
    command: str
    date: str
    results: list[ModelResult]
    targets: list[TargetCheck]
    profiles: list[PhaseProfile]

    def to_dict(self) -> dict:
        return asdict(self)


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
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(model_name: str, model: nn.Module, input_shape: tuple[int, int, int], times: dict[str, list[float]],
              memory: dict[str, int], *, interval: int) -> ModelResult:
    """Medians, quartiles and ratios to CE for one model's timings (seconds in, milliseconds out)."""
    ce = statistics.median(times["ce"])
    rows = []
    for method in [m for m in METHODS if m in times]:
        ms = [t * 1e3 for t in times[method]]
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0], ms[0], ms[0])
        median = statistics.median(ms)
        rows.append(MethodResult(
            method=method, label=method_label(method, interval), hypergradient=method_kind(method),
            median_ms=median, q1_ms=q1, q3_ms=q3, min_ms=min(ms), ratio_to_ce=median / (ce * 1e3),
            peak_memory_mib=memory[method] / 2**20 if method in memory else None, times_ms=ms))
    return ModelResult(model_name, input_shape, sum(p.numel() for p in model.parameters()), rows)


def evaluate_targets(results: Sequence[ModelResult]) -> list[TargetCheck]:
    """The issue's three speed targets, checked on every model that has the rows they need."""
    checks = []
    for result in results:
        ce, official = result.row("ce"), result.row("official")
        exact = result.row("forward")
        fast = [r for r in (result.row("last-layer"), result.row("interval"), result.row("last-layer-interval"))
                if r is not None]
        if exact is not None:
            checks.append(TargetCheck("exact default ≤ 2.2× CE", result.model, exact.ratio_to_ce,
                                      TARGET_EXACT_VS_CE, exact.ratio_to_ce <= TARGET_EXACT_VS_CE,
                                      f"forward mode {exact.ratio_to_ce:.2f}× CE"))
        if exact is not None and official is not None:
            speedup = official.median_ms / exact.median_ms
            checks.append(TargetCheck("official ÷ mwnet exact ≥ 1.5", result.model, speedup,
                                      TARGET_OFFICIAL_VS_EXACT, speedup >= TARGET_OFFICIAL_VS_EXACT,
                                      f"{official.median_ms:.1f} ms ÷ {exact.median_ms:.1f} ms"))
        if fast and ce is not None:
            best = min(fast, key=lambda r: r.ratio_to_ce)
            detail = ", ".join(f"{r.method} {r.ratio_to_ce:.2f}×" for r in fast)
            checks.append(TargetCheck("last-layer or interval ≤ 1.25× CE", result.model, best.ratio_to_ce,
                                      TARGET_FAST_VS_CE, best.ratio_to_ce <= TARGET_FAST_VS_CE, detail))
    return checks


def profile_phases(model: nn.Module, batches: tuple[Tensor, Tensor, Tensor, Tensor], *, model_name: str,
                   steps: int, warmup: int, device: torch.device | str = "cpu",
                   seed: int = 0) -> list[PhaseProfile]:
    """Phase breakdown of mwnet's default step and of the official step, with the whole step timed beside it.

    The whole-step median (`MetaReweighter.step`, resp. `official_step` without a clock) is timed interleaved
    with the phase runs, so that the phases can be checked to add up to the real thing. The default mode also
    gets its top operators by self time (torch.profiler, three steps).
    """
    device = torch.device(device)
    x, y, xm, ym = batches
    # Two independent sets of copies: one stepped whole, one phase by phase.
    runners = build_runners(model, batches, methods=("forward", "official"), seed=seed)
    phase_runners = build_runners(model, batches, methods=("forward", "official"), seed=seed)
    profiles = []
    for method, phased in (("forward", forward_mode_phases), ("official", official_step)):
        whole, parts = runners[method], phase_runners[method]
        samples: dict[str, list[float]] = {}
        step_times = []
        for i in range(warmup + steps):
            clock = PhaseClock(device)
            phased(parts.model, parts.optimizer, parts.weight_net, parts.weight_optimizer, x, y, xm, ym, clock=clock)
            _synchronize(device)
            start = time.perf_counter()
            whole.step()
            _synchronize(device)
            if i >= warmup:
                step_times.append(time.perf_counter() - start)
                for phase, seconds in clock.totals.items():
                    samples.setdefault(phase, []).append(seconds)
        phases = [(phase, statistics.median(s) * 1e3) for phase, s in samples.items()]
        profiles.append(PhaseProfile(method, model_name, steps, phases, statistics.median(step_times) * 1e3))
    profiles[0].top_ops = _top_ops(runners["forward"].step, device)
    return profiles


def _top_ops(fn: Callable[[], None], device: torch.device, *, calls: int = 3,
             count: int = 8) -> list[tuple[str, float, float]]:
    """The `count` operators with the most self time: (name, ms per call of `fn`, share of all self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    with _quiet_native_stderr():
        prof.start()
    try:
        for _ in range(calls):
            fn()
        _synchronize(device)
    finally:
        with _quiet_native_stderr():
            prof.stop()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in averages) or 1.0
    return [(e.key, getattr(e, attr) / 1e3 / calls, getattr(e, attr) / total) for e in averages[:count]]


def run_speed_benchmark(config: SpeedConfig, *, command: str = "",
                        progress: Callable[[str], None] | None = None) -> SpeedReport:
    """Time every method of `config` on every model; see the module docstring."""
    config.validate()
    device = torch.device(config.device)
    threads = config.threads or available_cores()
    say = progress or (lambda _msg: None)
    methods = ("ce", *[m for m in config.methods if m != "ce"])
    load_start = _load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        profiles: list[PhaseProfile] = []
        for name in config.models:
            channels, side = MODEL_INPUTS[name]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = models.create(name, in_channels=channels, num_classes=10, input_size=side).to(device)
            batches = random_batches(channels, side, config.batch_size, config.meta_batch_size or config.batch_size,
                                     seed=config.seed, device=device)
            runners = build_runners(model, batches, methods=methods, interval=config.interval, seed=config.seed)
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
                                          warmup=min(config.warmup, 2), device=device, seed=config.seed)
    finally:
        torch.set_num_threads(previous_threads)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine_info(config.device, threads)
    info["load"] = f"{load_start} at the start, {_load_average()} at the end"
    return SpeedReport(config, info, command, date, results, evaluate_targets(results), profiles)


def _load_average() -> str:
    """The host's 1-minute load average: on a shared machine, the context every timing needs."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def format_markdown(report: SpeedReport) -> str:
    """The report as Markdown: how it was measured, a table per model, the targets, where the time goes."""
    cfg, info = report.config, report.machine
    meta_batch = cfg.meta_batch_size or cfg.batch_size
    lines = [
        "# Speed: Meta-Weight-Net step time and memory",
        "",
        "Generated by:",
        "",
        "```",
        report.command or "mwnet bench speed",
        "```",
        "",
        f"- date: {report.date}",
        f"- machine: {info['cpu']}, {info['cores']}"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"- torch {info['torch']}, {info['threads']} intra-op threads (torch.set_num_threads), Python "
        f"{info['python']}, {info['os']}, device {info['device']}",
        f"- 1-minute load average of the host: {info.get('load', 'unknown')} (the benchmark itself adds about its "
        "thread count; more than that means other processes competed for the cores)",
        "",
        "## How it was measured",
        "",
        f"- One process. Per model, every method gets its own copy of the same initial model (seed {cfg.seed}), "
        "its own classifier SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4) and, for the meta methods, a "
        "copy of the same MetaWeightNet(100) with SGD (lr 1e-3, momentum 0.9, Nesterov, weight decay 5e-4).",
        f"- One fixed random batch: {cfg.batch_size} train + {meta_batch} meta samples, 10 classes; no data "
        "loading in the timed region; float32.",
        f"- {cfg.warmup} warm-up rounds, then {cfg.steps} timed rounds. A round runs one step of every method, "
        "in an order rotated every round, so that drift on a shared machine hits all methods alike. "
        "time.perf_counter around each step (torch.cuda.synchronize before and after on GPU); the table gives "
        "the median and the interquartile range; × CE divides by the CE median of the same run.",
        f"- meta_interval={cfg.interval}: each sample is a whole cycle of {cfg.interval} steps (one with the "
        "meta step) divided by its length, i.e. the amortised cost per step.",
        "- Official algorithm: written inside the benchmark (`mwnet.benchmark.official_step`) after the "
        "authors' script: a deepcopy of the model every step, virtual forward on the copy, `autograd.grad` with "
        "`create_graph=True`, meta forward at ŵ, `.backward()` of the meta loss (second order), Θ step, a second "
        "forward of the real model, weighted backward, step. One departure: the meta forward at ŵ uses "
        "`torch.func.functional_call` rather than the original's layers rewritten as `MetaModule`s (same "
        "arithmetic without the per-layer Python overhead), so if anything the yardstick is faster than the "
        "original code and the speed-ups below are conservative.",
        "- mwnet rows: `MetaReweighter(model, opt, MetaWeightNet(100), wopt, hypergradient=...)`.step, "
        "normalize=\"mean\".",
        "- Peak memory: the peak of tensor memory allocated during one step (one whole cycle for "
        "meta_interval) above what was allocated when it began, so the model, its optimizer state and the "
        "batches are not counted. "
        + ("CUDA: torch.cuda.max_memory_allocated after a reset, minus memory_allocated before the step. "
           if cfg.device == "cuda" else
           "CPU: the tensor allocator's allocation and free events, recorded by torch.profiler "
           "(profile_memory=True) and summed in time order. Frees of tensors allocated before the step (the "
           "previous step's gradients) are not recorded, so this can overstate by up to one set of gradients "
           "(the model's size); memory outside the tensor allocator (oneDNN scratch space, Python objects) is "
           "not counted. ")
        + "Measured in a separate pass after the timing.",
        "",
        "## Results",
    ]
    for result in report.results:
        c, s, _ = result.input_shape
        lines += [
            "",
            f"### {result.model}: {c}×{s}×{s} inputs, {result.parameters / 1e6:.2f} M parameters, "
            f"batch {cfg.batch_size} + meta {meta_batch}, {info['device']}",
            "",
            "| method | hypergradient | ms/step (median) | IQR (ms) | min (ms) | × CE | peak memory (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in result.methods:
            mem = "—" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.1f}"
            lines.append(f"| {r.label} | {r.hypergradient} | {r.median_ms:.1f} | {r.q1_ms:.1f}–{r.q3_ms:.1f} | "
                         f"{r.min_ms:.1f} | {r.ratio_to_ce:.2f} | {mem} |")
        if result.others_cpu is not None:
            lines += ["", f"Other processes used {result.others_cpu:.0%} of the host's CPU time while this table was "
                          "timed (from /proc/stat, this process's own time subtracted)."]
    if report.targets:
        lines += [
            "",
            "## Targets (issue 5; stated for ResNet-32 on 2 CPU cores, checked here on every model)",
            "",
            "| target | model | reached | met |",
            "|---|---|---|---|",
        ]
        for t in report.targets:
            met = "n/a" if t.met is None else ("met" if t.met else "not met")
            lines.append(f"| {t.target} | {t.model} | {t.detail} | {met} |")
    for prof in report.profiles:
        total = sum(ms for _, ms in prof.phases)
        title = ("mwnet default (forward mode)" if prof.method == "forward" else "official algorithm")
        lines += [
            "",
            f"## Where the time goes: {title}, {prof.model}",
            "",
            f"Each phase timed with a synchronising clock between the phases (median over {prof.steps} steps); "
            + ("the step is re-enacted phase by phase by `mwnet.benchmark.forward_mode_phases`, which the tests "
               "hold to the same update as `MetaReweighter.step`. "
               if prof.method == "forward" else "phases marked inside `official_step`. ")
            + f"The whole step, timed alongside without the clock: {prof.step_median_ms:.1f} ms.",
            "",
            "| phase | ms | share |",
            "|---|---:|---:|",
        ]
        for phase, ms in prof.phases:
            lines.append(f"| {phase} | {ms:.1f} | {ms / total:.0%} |")
        lines.append(f"| **sum of phases** | **{total:.1f}** | 100% |")
        if prof.top_ops:
            lines += [
                "",
                f"Top operators of `MetaReweighter.step` (torch.profiler, self "
                f"{'device' if cfg.device == 'cuda' else 'CPU'} time per step over 3 profiled steps, and its "
                f"share of all operators' self time; the profiler's overhead inflates the ms, the shares are "
                f"the robust part):",
                "",
                "| operator | ms | share |",
                "|---|---:|---:|",
            ]
            lines += [f"| `{name}` | {ms:.1f} | {share:.0%} |" for name, ms, share in prof.top_ops]
    return "\n".join(lines) + "\n"
