"""Step time and communication of `MetaReweighter.step`: one process vs two (gloo, CPU) on the same global batch.

    PYTHONPATH=src python benchmarks/distributed.py --output benchmarks/DISTRIBUTED.md

Each configuration runs in freshly spawned processes: one process stepping on the whole batch (100 train + 100
meta samples, 10 classes, float32, random data), or two ranks of a gloo process group each stepping on its
contiguous half (`mwnet.data.loaders.shard_block`), which the library treats as one global step. Same model
initialisation (seed 0), classifier SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4) and MetaWeightNet(100)
with SGD 1e-3 everywhere; normalize="sum" (the default), hypergradient "forward". A step is timed from a barrier
to its end on the slowest rank; the table gives the median over the timed steps. Traffic is what
`MetaReweighter.traffic` counts on rank 0 for one step: collectives and the bytes of the flat buffers it reduced
(a ring all-reduce sends about 2(W−1)/W times that per rank). Not part of the library: nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mwnet import MetaReweighter, MetaWeightNet, models
from mwnet.data.loaders import shard_block
from mwnet.system import load_average, machine_info

SHAPES = {"mlp": (1, 28, 28), "resnet32": (3, 32, 32)}
OPTIONS = {"mlp": {"hidden": [512, 512]}, "resnet32": {}}
CONFIGS = [(1, 1), (1, 2), (2, 1)]  # (processes, torch threads per process)


def worker(rank: int, world: int, threads: int, port: int, model_name: str, args: argparse.Namespace,
           out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    channels, side, _ = SHAPES[model_name]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch_size, *SHAPES[model_name], generator=g), torch.randint(0, 10, (args.batch_size,),
                                                                                         generator=g)
    xm, ym = torch.randn(args.batch_size, *SHAPES[model_name], generator=g), torch.randint(0, 10, (args.batch_size,),
                                                                                           generator=g)
    lo, hi = shard_block(args.batch_size, rank, world)
    record = {}
    # Timed: the default ("forward", "sum"); the other modes (one step each, on two ranks) for their traffic only.
    cases = [("forward", "sum"), ("forward", "mean")]
    if world > 1:
        cases += [(mode, norm) for mode in ("double-backward", "finite-difference", "last-layer")
                  for norm in ("sum", "mean")]
    for mode, normalize in cases:
        torch.manual_seed(0)
        model = models.create(model_name, in_channels=channels, input_size=side, **OPTIONS[model_name])
        weight_net = MetaWeightNet(hidden=100)
        rw = MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                                   weight_decay=5e-4),
                            weight_net, torch.optim.SGD(weight_net.parameters(), lr=1e-3, momentum=0.9,
                                                        nesterov=True, weight_decay=5e-4), normalize=normalize,
                            hypergradient=mode)
        times = []
        steps = args.warmup + args.steps if (mode, normalize) == ("forward", "sum") else 1
        for step in range(steps):
            if world > 1:
                dist.barrier()
            before = (rw.traffic.collectives, rw.traffic.bytes)
            start = time.perf_counter()
            rw.step(x[lo:hi], y[lo:hi], xm[lo:hi], ym[lo:hi])
            elapsed = torch.tensor([time.perf_counter() - start])
            if world > 1:
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if step >= args.warmup or steps == 1:
                times.append(float(elapsed))
        key = normalize if mode == "forward" else f"{mode}/{normalize}"
        record[key] = {"collectives": rw.traffic.collectives - before[0], "bytes": rw.traffic.bytes - before[1],
                       "ms": [1000 * t for t in times]}
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["buffers"] = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    record["theta"] = sum(p.numel() for p in weight_net.parameters())
    if rank == 0:
        Path(out).write_text(json.dumps(record))
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model_name: str, processes: int, threads: int, args: argparse.Namespace, scratch: Path) -> dict:
    out = scratch / f"{model_name}-{processes}x{threads}.json"
    mp.spawn(worker, args=(processes, threads, free_port(), model_name, args, str(out)), nprocs=processes)
    return json.loads(out.read_text())


def report(results: dict, args: argparse.Namespace, started: str, load_start: str) -> str:
    command = "PYTHONPATH=src python benchmarks/distributed.py " + " ".join(sys.argv[1:])
    info = machine_info("cpu", 1)
    lines = ["# Distributed step: one process vs two (gloo, CPU)", "", "Generated by:", "", "```", command, "```", "",
             f"- date: {started}", f"- machine: {info['cpu']}, {info['cores']}",
             f"- torch {info['torch']}, Python {info['python']}, {info['os']}",
             f"- 1-minute load average of the host: {load_start} at the start, {load_average()} at the end", "",
             "Global batch 100 train + 100 meta (each of two ranks steps on 50 + 50), normalize='sum', hypergradient "
             f"'forward'; {args.warmup} warm-up steps, median of {args.steps} timed steps (from a barrier to the "
             "end of the slowest rank). Traffic: `MetaReweighter.traffic` of rank 0 for one step.", "",
             "| model | parameters P | processes × threads | ms/step (median) | × 1 process, 2 threads |",
             "|---|---:|---|---:|---:|"]
    for name, runs in results.items():
        base = statistics.median(runs["1x2"]["sum"]["ms"])
        for key, run in runs.items():
            ms = statistics.median(run["sum"]["ms"])
            lines.append(f"| {name} | {run['parameters']:,} | {key.replace('x', ' × ')} | {ms:.1f} | "
                         f"{ms / base:.2f} |")
    lines += ["", "| model | hypergradient | normalize | collectives / step | bytes / step | bytes / (4 P) |",
              "|---|---|---|---:|---:|---:|"]
    for name, runs in results.items():
        run = runs["2x1"]
        for key in [k for k in run if k in ("mean", "sum") or "/" in k]:
            mode, normalize = key.split("/") if "/" in key else ("forward", key)
            sent = run[key]
            lines.append(f"| {name} | {mode} | {normalize} | {sent['collectives']} | {sent['bytes']:,} | "
                         f"{sent['bytes'] / (4 * run['parameters']):.3f} |")
    lines += ["", "Sizes: " + "; ".join(f"{name}: P = {r['2x1']['parameters']:,} parameters, B = "
                                        f"{r['2x1']['buffers']:,} floating-point buffer values, |Θ| = "
                                        f"{r['2x1']['theta']:,}" for name, r in results.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,resnet32")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown report here [stdout]")
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"mwnet-distributed-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {name: {f"{p}x{t}": measure(name, p, t, args, scratch) for p, t in CONFIGS}
               for name in args.models.split(",")}
    text = report(results, args, started, load_start)
    if args.output:
        args.output.write_text(text)
    else:
        print(text)
    (scratch / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
