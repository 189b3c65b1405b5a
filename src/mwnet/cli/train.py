"""`mwnet train`: train one run (a preset and/or flags) into a run directory.

Train one configuration. A --preset sets the paper's (or our Fashion-MNIST protocol's) values; every flag
overrides it, a flag left out keeps the preset's (or the default) value. Writes config.json, metrics.jsonl,
summary.json, checkpoint.pt, suspects.csv and figures/ into --out.

Every TrainConfig field is a flag, with its type and help from the field's declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from mwnet.cli import CLIError, add_command
from mwnet.cli.flags import WEIGHT_NET_FIELDS, add_field_flag, field_doc, key_values, print_line
from mwnet.experiment.config import TrainConfig

# Fields with a flag of their own shape (or none: the preset's name is a record); every other field is `--NAME`,
# the weight net's last.
_SPECIAL = ("lr_milestones", "method_options", "model_options", "preset")
_FLAG_FIELDS = tuple(sorted((f.name for f in dataclasses.fields(TrainConfig) if f.name not in _SPECIAL),
                            key=lambda name: name in WEIGHT_NET_FIELDS))


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("--preset", help="start from this preset (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and their values, then exit")
    parser.add_argument("--config", metavar="FILE", help="start from a config.json (e.g. of an earlier run)")
    weight_net = parser.add_argument_group("weight net (method mwnet; --hypergradient also for l2rw)")
    for name in _FLAG_FIELDS:
        add_field_flag(weight_net if name in WEIGHT_NET_FIELDS else parser, name)
    parser.add_argument("--lr-milestones", metavar="M1,M2", help=f"{field_doc('lr_milestones')} (comma-separated; "
                        "'none' for a constant lr)")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{field_doc('method_options')} (repeatable; VALUE is JSON or text)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{field_doc('model_options')} (repeatable)")
    parser.add_argument("--out", help="run directory [runs/<preset or dataset>-<method>-s<seed>]")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs "
                        "pip install mwnet[tensorboard])")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from mwnet.experiment.presets import PRESETS
    from mwnet.experiment.ranks import agreement, is_agreed, start_process_group, stop_process_group

    if args.list_presets:
        for name in sorted(PRESETS):
            print(f"{name}: {json.dumps(PRESETS[name])}")
        return 0
    ranks = start_process_group()  # under torchrun: join the other processes (mwnet.experiment.ranks)
    try:
        with agreement(ranks, (CLIError,)):  # a rank that cannot read a file stops every rank, with its message
            config, out = _resolve(args)
        summary = train_logged(config, out, resume=args.resume, overwrite=args.overwrite,
                               tensorboard=args.tensorboard, quiet=args.quiet)
    except Exception as exc:
        if ranks is not None and is_agreed(exc):
            stop_process_group(ranks)
        raise
    if ranks is not None:
        stop_process_group(ranks)
    return 130 if summary is None else 0


def _resolve(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The run's config and directory from the flags (a preset, --config or the run to resume, then overrides)."""
    from mwnet.experiment.config import apply_overrides, load_config, resolve_config, validate_config

    overrides = _overrides(args)
    out = Path(args.out) if args.out else _default_out(args.preset, overrides)
    if args.resume:
        # The saved run is the base; flags may only repeat its values (train() checks) or change the device.
        if not (out / "config.json").is_file():
            raise CLIError(f"nothing to resume: no config.json in {out}")
        base = load_config(out / "config.json") if args.preset is None else resolve_config(args.preset)
        if "epochs" in overrides and "iterations" not in overrides:
            overrides["iterations"] = None
        config = apply_overrides(base, overrides)
        validate_config(config)
    elif args.config:
        if args.preset:
            raise CLIError("give --preset or --config, not both")
        config = apply_overrides(load_config(Path(args.config)), {"preset": None, **overrides})
        validate_config(config)
    else:
        config = resolve_config(args.preset, overrides)
    return config, out


def train_logged(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, tensorboard: bool,
                 quiet: bool) -> dict | None:
    """Run `train` with the command line's progress bar and epoch lines; on Ctrl-C say how to resume and return
    None."""
    from mwnet.experiment import runner
    from mwnet.experiment.signals import TrainingInterrupted

    try:
        return runner.train(config, out, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                            progress=False if quiet else None, log=None if quiet else print_line)
    except TrainingInterrupted as exc:
        from mwnet.experiment.ranks import launched_rank, launched_world_size

        if launched_rank() > 0:
            return None
        world = launched_world_size()
        again = f"mwnet train --out {out} --resume" + (f" (under torchrun, with {world} processes again)"
                                                         if world > 1 else "")
        print(f"mwnet: interrupted in epoch {exc.epoch} at iteration {exc.iteration}; checkpoint saved. Resume "
              f"with: {again}", file=sys.stderr)
        return None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave on the command line (flags left out are absent)."""
    values: dict[str, Any] = {name: getattr(args, name) for name in _FLAG_FIELDS if getattr(args, name) is not None}
    if isinstance(values.get("noise"), str) and values["noise"].lower() in ("none", "clean"):
        values["noise"] = None
    if args.lr_milestones is not None:
        text = args.lr_milestones.strip()
        try:
            values["lr_milestones"] = [] if text.lower() in ("", "none") else [int(v) for v in text.split(",")]
        except ValueError:
            raise CLIError(f"--lr-milestones must be comma-separated integers, got {args.lr_milestones!r}") from None
    if args.method_option:
        values["method_options"] = key_values(args.method_option, "--method-option")
    if args.model_option:
        values["model_options"] = key_values(args.model_option, "--model-option")
    return values


def _default_out(preset: str | None, overrides: dict[str, Any]) -> Path:
    from mwnet.experiment.presets import PRESETS

    default = TrainConfig()
    base = preset or overrides.get("dataset", default.dataset).replace(":", "-").replace("/", "-")
    method = overrides.get("method") or PRESETS.get(preset or "", {}).get("method") or default.method
    return Path("runs") / f"{base}-{method}-s{overrides.get('seed', default.seed)}"
