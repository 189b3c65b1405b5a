"""`mwnet train`: train one run (a preset and/or flags) into a run directory.

Train one configuration. A --preset sets the paper's (or our Fashion-MNIST protocol's) values; every flag
overrides it, a flag left out keeps the preset's (or the default) value. Writes config.json, metrics.jsonl,
summary.json, checkpoint.pt, best_model.pt (chosen on the meta set), suspects.csv and figures/ into --out. The first
line says where the meta set came from; a ranking of suspects that had to fall back to the loss is one warning
line on stderr.

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
    parser.add_argument("--list-presets", action="store_true", help="print the presets as a table, then exit")
    parser.add_argument("--json", action="store_true", help="with --list-presets: one JSON object a line (name and "
                        "the preset's values) instead of the table")
    parser.add_argument("--config", metavar="FILE", help="start from a config.json (e.g. of an earlier run)")
    weight_net = parser.add_argument_group("weight net (methods mwnet, cmwnet, cmwnet-sl; --hypergradient also for "
                                                         "l2rw)")
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
        if args.json:
            for name in sorted(PRESETS):
                print(json.dumps({"name": name, **PRESETS[name]}))
        else:
            print(preset_table())
        return 0
    if args.json:
        raise CLIError("--json applies to --list-presets only")
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
    return exit_code([summary])


def _resolve(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The run's config and directory from the flags (a preset, --config or the run to resume, then overrides)."""
    from mwnet.experiment.config import apply_overrides, check_run_length, load_config, resolve_config, validate_config

    overrides = _overrides(args)
    check_run_length(overrides)
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
    if (args.resume or args.config) and ":" in config.model and "model" not in overrides:
        source = out / "config.json" if args.resume else args.config
        raise CLIError(f"{source} names your own model {config.model!r}: give --model {config.model} to import it "
                       f"(mwnet imports no code that a file names)")
    return config, out


def exit_code(summaries: list[dict | None]) -> int:
    """The exit code of runs that ended with these summaries (None: interrupted): 130 if one was interrupted,
    3 if one diverged (named on stderr: its files are written, but a script must notice), else 0."""
    from mwnet.cli import EXIT_DIVERGED, EXIT_INTERRUPTED

    if any(summary is None for summary in summaries):
        return EXIT_INTERRUPTED
    diverged = [s for s in summaries if s and s.get("diverged")]
    from mwnet.experiment.ranks import launched_rank

    for summary in diverged if launched_rank() == 0 else ():  # under torchrun, rank 0 alone says so
        where = summary["diverged"]
        print(f"mwnet: the {summary.get('method')} run diverged in epoch {where['epoch']} at iteration "
              f"{where['iteration']} ({where['error']}); its files say so (summary.json: diverged); exit code "
              f"{EXIT_DIVERGED}", file=sys.stderr)
    return EXIT_DIVERGED if diverged else 0


def train_logged(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool, tensorboard: bool,
                 quiet: bool) -> dict | None:
    """Run `train` with the command line's progress bar and epoch lines; on Ctrl-C say how to resume and return
    None."""
    from mwnet.experiment import runner
    from mwnet.experiment.ranks import launched_rank
    from mwnet.experiment.signals import TrainingInterrupted

    try:
        summary = runner.train(config, out, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                               progress=False if quiet else None, log=None if quiet else print_line)
    except TrainingInterrupted as exc:
        from mwnet.experiment.ranks import launched_world_size

        if launched_rank() > 0:
            return None
        world = launched_world_size()
        again = f"mwnet train --out {out} --resume" + (f" (under torchrun, with {world} processes again)"
                                                         if world > 1 else "")
        print(f"mwnet: interrupted in epoch {exc.epoch} at iteration {exc.iteration}; checkpoint saved. Resume "
              f"with: {again}", file=sys.stderr)
        return None
    if summary.get("suspects_warning") and launched_rank() == 0:
        print(f"mwnet: warning: {out / 'suspects.csv'}: {summary['suspects_warning']}", file=sys.stderr)
    return summary


def preset_table() -> str:
    """The presets as an aligned table: data, corruption, meta set, model, schedule, weight-net optimiser."""
    from mwnet.experiment.config import resolve_config
    from mwnet.experiment.presets import PRESETS

    rows = [("preset", "data set", "corruption", "meta set", "model", "schedule", "weight net")]
    for name in sorted(PRESETS):
        c = resolve_config(name)
        corruption = ", ".join(s for s in (c.noise, f"long tail IF {c.imbalance:g}" if c.imbalance > 1 else "") if s)
        meta = f"{c.num_meta}" if c.num_meta else f"{c.meta_per_class}/class" if c.meta_per_class else "shipped"
        length = f"{c.iterations} it" if c.iterations else f"{c.epochs} ep"
        decay = f", ×{c.lr_gamma:g} at {','.join(map(str, c.lr_milestones))}" if c.lr_milestones else ""
        data = c.dataset if "dataset" in PRESETS[name] else "give --dataset"
        rows.append((name, data, corruption or "clean", meta, c.model, f"{length}, lr {c.lr:g}{decay}",
                     f"{c.meta_optimizer} {c.meta_lr:g}" if c.method == "mwnet" else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


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
