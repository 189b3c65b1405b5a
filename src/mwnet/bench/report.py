"""The speed report: its records, the summary of raw timings, and its Markdown (prose from speed_template.md)."""

from __future__ import annotations

import functools
import re
import statistics
from dataclasses import asdict, dataclass, field
from importlib import resources
from string import Template

from torch import nn

from mwnet.bench.config import SpeedConfig
from mwnet.bench.runners import (
    ALL_METHODS,
    CLASSIFIER_SGD,
    NORMALIZE,
    WEIGHT_NET_HIDDEN,
    WEIGHT_NET_SGD,
    describe_sgd,
    method_kind,
    method_label,
)


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
class PhaseProfile:
    """Median milliseconds per marked phase of one step, and the median of the whole step timed without profiler.

    `phases` holds (mark name, ms) in the order the step runs them; `top_ops` (operator, ms per step, share of all
    operators' self time) is filled for the default mwnet mode only.
    """

    method: str
    model: str
    steps: int
    phases: list[tuple[str, float]]
    step_median_ms: float
    top_ops: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class PeerNote:
    """A peer row asked for: its version and what its step computes, or (version None) why it was skipped."""

    method: str
    label: str
    version: str | None
    note: str


@dataclass
class SpeedReport:
    config: SpeedConfig
    machine: dict[str, str]
    command: str
    date: str
    results: list[ModelResult]
    profiles: list[PhaseProfile]
    peers: list[PeerNote] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(model_name: str, model: nn.Module, input_shape: tuple[int, int, int], times: dict[str, list[float]],
              memory: dict[str, int], *, interval: int) -> ModelResult:
    """Medians, quartiles and ratios to CE for one model's timings (seconds in, milliseconds out)."""
    ce = statistics.median(times["ce"])
    rows = []
    for method in [m for m in ALL_METHODS if m in times]:
        ms = [t * 1e3 for t in times[method]]
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0], ms[0], ms[0])
        median = statistics.median(ms)
        rows.append(MethodResult(
            method=method, label=method_label(method, interval), hypergradient=method_kind(method),
            median_ms=median, q1_ms=q1, q3_ms=q3, min_ms=min(ms), ratio_to_ce=median / (ce * 1e3),
            peak_memory_mib=memory[method] / 2**20 if method in memory else None, times_ms=ms))
    return ModelResult(model_name, input_shape, sum(p.numel() for p in model.parameters()), rows)


_BLOCK = re.compile(r"^<!-- block: ([\w-]+) -->$", re.MULTILINE)


@functools.cache
def template_blocks() -> dict[str, Template]:
    """The named blocks of speed_template.md (the text before the first block is the file's own comment)."""
    text = resources.files("mwnet.bench").joinpath("speed_template.md").read_text(encoding="utf-8")
    parts = _BLOCK.split(text)
    return {name: Template(body.strip("\n")) for name, body in zip(parts[1::2], parts[2::2])}


def _fill(block: str, **values: object) -> str:
    return template_blocks()[block].substitute(**values)


def format_markdown(report: SpeedReport) -> str:
    """The report as Markdown: how it was measured, a table per model, where the time goes."""
    cfg, info = report.config, report.machine
    meta_batch = cfg.meta_batch_size or cfg.batch_size
    cuda = cfg.device == "cuda"
    lines = [_fill(
        "header", command=report.command or "mwnet bench speed", date=report.date,
        machine=f"{info['cpu']}, {info['cores']}" + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        torch=info["torch"], threads=info["threads"], python=info["python"], os=info["os"], device=info["device"],
        allocator=info.get("allocator", "unknown"),
        load=info.get("load", "unknown"), seed=cfg.seed, classifier_sgd=describe_sgd(CLASSIFIER_SGD),
        hidden=WEIGHT_NET_HIDDEN, weight_net_sgd=describe_sgd(WEIGHT_NET_SGD), batch_size=cfg.batch_size,
        meta_batch_size=meta_batch, warmup=cfg.warmup, steps=cfg.steps, interval=cfg.interval,
        normalize=NORMALIZE, memory_method=_fill("memory-cuda" if cuda else "memory-cpu"),
        precision=_precision(cfg.precision, cuda), peers=_peer_lines(report.peers))]
    for result in report.results:
        c, s, _ = result.input_shape
        lines += [
            "",
            f"### {result.model}: {c}×{s}×{s} inputs, {result.parameters / 1e6:.2f} M parameters, "
            f"batch {cfg.batch_size} + meta {meta_batch}, {info['device']}"
            + ("" if cfg.precision == "fp32" else f", {cfg.precision}"),
            "",
            "| method | hypergradient | ms/step (median) | IQR (ms) | min (ms) | × CE | peak memory (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in result.methods:
            mem = "—" if r.peak_memory_mib is None else f"{r.peak_memory_mib:.1f}"
            lines.append(f"| {r.label} | {r.hypergradient} | {r.median_ms:.1f} | {r.q1_ms:.1f}–{r.q3_ms:.1f} | "
                         f"{r.min_ms:.1f} | {r.ratio_to_ce:.2f} | {mem} |")
        if result.others_cpu is not None:
            lines += ["", _fill("others-cpu", share=f"{result.others_cpu:.0%}")]
    for prof in report.profiles:
        lines += ["", *_phase_table(prof, cuda)]
    return "\n".join(lines) + "\n"


def _precision(precision: str, cuda: bool) -> str:
    fp32 = _fill("precision-cuda" if cuda else "precision-cpu")
    if precision == "fp32":
        return fp32
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[precision]
    return _fill("precision-autocast", name=precision, dtype=dtype, fp32=fp32,
                 scaler=", with a GradScaler" if precision == "fp16" else "")


def _peer_lines(peers: list[PeerNote]) -> str:
    """The methodology bullet of the peer rows: each one's version and semantics, or why it was skipped."""
    if not peers:
        return ""
    lines = [f"- {_fill('peers')}"]
    for peer in peers:
        name = peer.label.split(" (")[0]
        if peer.version is None:
            lines.append(f"  - **{name}**: not timed; {peer.note}")
        else:
            lines.append(f"  - **{name} {peer.version}**: {peer.note}")
    return "\n".join(lines) + "\n"


def _phase_table(prof: PhaseProfile, cuda: bool) -> list[str]:
    total = sum(ms for _, ms in prof.phases)
    default = prof.method == "forward"
    lines = [
        _fill("phases", title="mwnet default (forward mode)" if default else "official algorithm",
              model=prof.model, steps=prof.steps,
              where="`MetaReweighter.step`, mwnet.core" if default else "`official_step`, mwnet.reference",
              measure=_fill("measure-cuda" if cuda else "measure-cpu"), step_ms=f"{prof.step_median_ms:.1f}"),
        "",
        "| phase (mark) | ms | share |",
        "|---|---:|---:|",
    ]
    for phase, ms in prof.phases:
        lines.append(f"| `{phase}` | {ms:.1f} | {ms / total if total else 0.0:.0%} |")
    lines.append(f"| **sum of phases** | **{total:.1f}** | 100% |")
    if prof.top_ops:
        lines += [
            "",
            _fill("top-ops", clock="device" if cuda else "CPU", steps=prof.steps),
            "",
            "| operator | ms | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{name}` | {ms:.1f} | {share:.0%} |" for name, ms, share in prof.top_ops]
    return lines
