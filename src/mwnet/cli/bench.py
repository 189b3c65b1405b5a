"""`mwnet bench speed`: time plain CE, the official algorithm, every mwnet mode and the installed peers (higher,
torchopt, Betty); write benchmarks/SPEED.md.

The benchmark package (mwnet.bench) is imported only when the command runs, so building the parser, and any other
sub-command, loads none of it; the help below therefore names the defaults in words (tests hold them to the code).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mwnet.bench import SpeedConfig


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks of the meta step",
                                  description="Benchmarks of the Meta-Weight-Net step.")
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    kinds.required = True
    speed = kinds.add_parser(
        "speed", help="step time and peak memory of CE, the official algorithm and every mwnet mode",
        description="Median step time and peak memory of plain CE training, the official Meta-Weight-Net "
                    "algorithm, every MetaReweighter mode and the peer libraries' steps (higher, torchopt, Betty: "
                    "each skipped with a note when not installed), all in one process, as ratios to CE; writes a "
                    "Markdown report.")
    speed.add_argument("--models", default=None, help="comma-separated models [cnn,resnet32, plus wrn28_10 on CUDA]")
    speed.add_argument("--methods", default=None,
                       help="comma-separated rows to time (ce is always timed; a peer whose package is missing is "
                            "skipped with a note) [all: ce,official,forward,forward-full-dual,double-backward,"
                            "finite-difference,last-layer,interval,last-layer-interval,higher,torchopt,betty]")
    speed.add_argument("--batch-size", type=int, default=100, help="train batch size [%(default)s]")
    speed.add_argument("--meta-batch-size", type=int, default=None, help="meta batch size [the train batch size]")
    speed.add_argument("--steps", type=int, default=15, help="timed steps per method [%(default)s]")
    speed.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per method [%(default)s]")
    speed.add_argument("--interval", type=int, default=5,
                       help="k of the meta_interval=k row, timed over whole cycles of k steps [%(default)s]")
    speed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to run; auto picks cuda when available [%(default)s]")
    speed.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="fp32, or bf16/fp16 autocast as MetaReweighter(precision=...); fp16 needs CUDA "
                            "[%(default)s]")
    speed.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads [the cores this process may use]")
    speed.add_argument("--seed", type=int, default=0, help="seed of the models and the random batches [%(default)s]")
    speed.add_argument("--profile-model", default=None,
                       help="model whose step is broken into phases, or 'none' [resnet32 when benchmarked]")
    speed.add_argument("--profile-steps", type=int, default=5, help="profiled steps of the phase table [%(default)s]")
    speed.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    speed.add_argument("--output", default="benchmarks/SPEED.md", help="Markdown report [%(default)s]")
    speed.add_argument("--json", default=None, help="also write every measurement as JSON to this path")
    speed.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    speed.set_defaults(func=run)


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"--{what} is empty")
    return names


def _check_output(path: str, flag: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} is a directory: {path}")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag}: {parent} is not a directory")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{flag}: cannot write in {parent}")
            break
    return out


def _write(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, so that a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open (not mkstemp, which makes the file private) so the report gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _command(args: argparse.Namespace, config: SpeedConfig, threads: int) -> str:
    """The command line that reproduces this run, every value spelled out, after the allocator settings it ran
    under (CPU timings depend on them)."""
    from mwnet.bench import ALL_METHODS
    from mwnet.system import allocator_settings

    parts = [*allocator_settings(), "mwnet", "bench", "speed", "--models", ",".join(config.models),
             "--batch-size", str(config.batch_size)]
    if config.meta_batch_size is not None:
        parts += ["--meta-batch-size", str(config.meta_batch_size)]
    parts += ["--steps", str(config.steps), "--warmup", str(config.warmup), "--interval", str(config.interval),
              "--device", config.device, "--precision", config.precision, "--threads", str(threads),
              "--seed", str(config.seed), "--profile-model", config.profile_model or "none"]
    if config.methods != ALL_METHODS:
        parts += ["--methods", ",".join(config.methods)]
    if config.profile_model is not None:
        parts += ["--profile-steps", str(config.profile_steps)]
    if not config.memory:
        parts.append("--no-memory")
    parts += ["--output", args.output]
    if args.json:
        parts += ["--json", args.json]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from mwnet.bench import (
        ALL_METHODS,
        DEFAULT_MODELS,
        GPU_MODELS,
        SpeedConfig,
        format_markdown,
        resolve_device,
        run_speed_benchmark,
    )
    from mwnet.system import available_cores

    device = resolve_device(args.device)
    if args.models is None:
        models = DEFAULT_MODELS + (GPU_MODELS if device == "cuda" else ())
    else:
        models = _names(args.models, "models")
    if args.profile_model is None:
        profile_model = "resnet32" if "resnet32" in models else None
    else:
        profile_model = None if args.profile_model == "none" else args.profile_model
    methods = ALL_METHODS if args.methods is None else _names(args.methods, "methods")
    config = SpeedConfig(models=models, methods=methods, batch_size=args.batch_size,
                         meta_batch_size=args.meta_batch_size, steps=args.steps, warmup=args.warmup,
                         interval=args.interval, device=device, precision=args.precision, threads=args.threads,
                         seed=args.seed, memory=not args.no_memory, profile_model=profile_model,
                         profile_steps=args.profile_steps)
    config.validate()
    if profile_model is not None and profile_model not in models:
        raise ValueError(f"--profile-model {profile_model} is not among the benchmarked models")
    output = _check_output(args.output, "--output")
    json_path = _check_output(args.json, "--json") if args.json else None
    if json_path is not None and json_path.absolute() == output.absolute():
        raise ValueError(f"--json and --output are the same file: {args.output}")
    threads = args.threads or available_cores()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"mwnet bench speed: {message}", file=sys.stderr, flush=True)

    report = run_speed_benchmark(config, command=_command(args, config, threads), progress=progress)
    text = format_markdown(report)
    _write(output, text)
    if json_path is not None:
        _write(json_path, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
    print(text, end="")
    progress(f"wrote {output}" + (f" and {json_path}" if json_path else "")
             + f" (torch {torch.__version__}, {threads} threads)")
    return 0
