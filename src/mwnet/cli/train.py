"""`mwnet train` (one run from a preset and flags) and `mwnet demo` (CE vs MW-Net on noisy Fashion-MNIST).

Every flag overrides the preset's value; a flag left out keeps the preset's (or TrainConfig's default) value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mwnet.cli import CLIError

# Flag → TrainConfig field for the plain value flags (type, help). Booleans and lists are added separately.
_VALUE_FLAGS: dict[str, tuple[Any, str]] = {
    "dataset": (str, "data set: fashion-mnist, mnist, cifar10, cifar100, digits, folder:PATH, arrays:PATH"),
    "data_dir": (str, "where data sets are looked for and downloaded"),
    "noise": (str, "label noise: uniform:R, flip:R, flip2:R (R in [0, 1]) or none"),
    "imbalance": (float, "long-tail imbalance factor n_max/n_min (1 = balanced)"),
    "num_meta": (int, "size of the clean meta set"),
    "meta_per_class": (int, "clean meta samples per class (instead of --num-meta)"),
    "train_subset": (int, "train on a seeded subset of this many images"),
    "method": (str, "training method (see `mwnet info`): ce, mwnet, ..."),
    "model": (str, "model: auto, cnn, mlp, resnet32, resnet50, wrn28_10"),
    "epochs": (int, "training epochs (clears a preset's --iterations)"),
    "iterations": (int, "stop after this many iterations instead (the paper's noise settings)"),
    "batch_size": (int, "training batch size"),
    "meta_batch_size": (int, "meta batch size"),
    "eval_batch_size": (int, "evaluation batch size"),
    "lr": (float, "classifier learning rate (SGD)"),
    "momentum": (float, "classifier SGD momentum"),
    "weight_decay": (float, "classifier weight decay"),
    "lr_gamma": (float, "lr factor at each milestone"),
    "lr_unit": (str, "count --lr-milestones in 'epoch' or 'iteration'"),
    "normalize": (str, "mwnet: divide the weighted loss by 'sum' of weights or by batch size ('mean')"),
    "hypergradient": (str, "mwnet: forward (exact, fastest), double-backward, finite-difference, last-layer"),
    "meta_interval": (int, "mwnet: update the weight net every k-th iteration"),
    "weight_net_hidden": (int, "mwnet: hidden width of the weight net"),
    "meta_optimizer": (str, "mwnet: weight-net optimiser, sgd or adam"),
    "meta_lr": (float, "mwnet: weight-net learning rate"),
    "meta_momentum": (float, "mwnet: weight-net SGD momentum"),
    "meta_weight_decay": (float, "mwnet: weight-net weight decay"),
    "seed": (int, "seed of the split, the noise, the initialisation and the data order"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
}
_BOOL_FLAGS = {
    "augment": "random crop + horizontal flip on training batches",
    "nesterov": "Nesterov momentum for the classifier",
    "meta_nesterov": "mwnet: Nesterov momentum for the weight net",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train one run (a preset and/or flags) into a run directory",
        description="Train one configuration. A --preset sets the paper's (or our Fashion-MNIST protocol's) values; "
                    "every flag overrides it. Writes config.json, metrics.jsonl, summary.json, checkpoint.pt, "
                    "suspects.csv and figures/ into --out.")
    parser.add_argument("--preset", help="start from this preset (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and their values, then exit")
    parser.add_argument("--config", metavar="FILE", help="start from a config.json (e.g. of an earlier run)")
    for name, (kind, text) in _VALUE_FLAGS.items():
        metavar = {int: "N", float: "X"}.get(kind, name.split("_")[-1].upper())
        parser.add_argument(_flag(name), dest=name, type=kind, metavar=metavar, help=text)
    for name, text in _BOOL_FLAGS.items():
        parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    parser.add_argument("--lr-milestones", metavar="M1,M2", help="multiply the lr by --lr-gamma at these "
                        "epochs/iterations (comma-separated; 'none' for a constant lr)")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the method that has no flag of its own (repeatable; VALUE is JSON or text)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the model factory, e.g. dropout=0.3 (repeatable)")
    parser.add_argument("--out", help="run directory [runs/<preset or dataset>-<method>-s<seed>]")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs "
                        "pip install mwnet[tensorboard])")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    parser.set_defaults(func=run_train)

    demo = subparsers.add_parser(
        "demo", help="CE vs Meta-Weight-Net on Fashion-MNIST with 40%% uniform label noise (a few CPU minutes)",
        description="Train plain cross-entropy and Meta-Weight-Net side by side on Fashion-MNIST with 40 % uniform "
                    "label noise (scikit-learn's digits where Fashion-MNIST is absent), print a table and write "
                    "both run directories and the figures. Re-running continues or reuses finished runs.")
    demo.add_argument("--out", default="runs/demo", help="directory for the two runs and the figures [runs/demo]")
    demo.add_argument("--data-dir", metavar="DIR", help="where to look for Fashion-MNIST")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    demo.add_argument("--seed", type=int, default=0, help="seed [0]")
    demo.add_argument("--epochs", type=int, help="override the demo's number of epochs")
    demo.add_argument("--overwrite", action="store_true", help="retrain even where a finished run exists")
    demo.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    demo.set_defaults(func=run_demo)


# --------------------------------------------------------------------------------------------------------------
# mwnet train
# --------------------------------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    from mwnet.experiment.config import (
        PRESETS,
        TrainConfig,
        apply_overrides,
        load_config,
        resolve_config,
        validate_config,
    )
    if args.list_presets:
        for name in sorted(PRESETS):
            print(f"{name}: {json.dumps(PRESETS[name])}")
        return 0
    overrides = _overrides(args)
    out = Path(args.out) if args.out else _default_out(args, overrides)
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
    assert isinstance(config, TrainConfig)
    summary = _train_cli(config, out, resume=args.resume, overwrite=args.overwrite, tensorboard=args.tensorboard,
                         quiet=args.quiet)
    if summary is None:
        return 130
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave on the command line (flags left out are absent)."""
    values: dict[str, Any] = {}
    for name in (*_VALUE_FLAGS, *_BOOL_FLAGS):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if isinstance(values.get("noise"), str) and values["noise"].lower() in ("none", "clean"):
        values["noise"] = None
    if args.lr_milestones is not None:
        text = args.lr_milestones.strip()
        try:
            values["lr_milestones"] = [] if text.lower() in ("", "none") else [int(v) for v in text.split(",")]
        except ValueError:
            raise CLIError(f"--lr-milestones must be comma-separated integers, got {args.lr_milestones!r}") from None
    if args.method_option:
        values["method_options"] = _key_values(args.method_option, "--method-option")
    if args.model_option:
        values["model_options"] = _key_values(args.model_option, "--model-option")
    return values


def _key_values(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} must look like KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = text
    return out


def _default_out(args: argparse.Namespace, overrides: dict[str, Any]) -> Path:
    from mwnet.experiment.config import TrainConfig

    default = TrainConfig()
    base = args.preset or overrides.get("dataset", default.dataset).replace(":", "-").replace("/", "-")
    method = overrides.get("method") or (_preset_value(args.preset, "method") or default.method)
    return Path("runs") / f"{base}-{method}-s{overrides.get('seed', default.seed)}"


def _preset_value(preset: str | None, key: str) -> Any:
    from mwnet.experiment.config import PRESETS

    return PRESETS.get(preset or "", {}).get(key)


def _train_cli(config: Any, out: Path, *, resume: bool, overwrite: bool, tensorboard: bool,
               quiet: bool) -> dict | None:
    """Run `train` with CLI logging; on Ctrl-C say how to resume and return None."""
    from mwnet.experiment.runner import TrainingInterrupted, train

    try:
        return train(config, out, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                     progress=False if quiet else None, log=None if quiet else _print)
    except TrainingInterrupted as exc:
        print(f"mwnet: interrupted in epoch {exc.epoch} at iteration {exc.iteration}; checkpoint saved. Resume "
              f"with: mwnet train --out {out} --resume", file=sys.stderr)
        return None


def _print(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------------------
# mwnet demo
# --------------------------------------------------------------------------------------------------------------

_DEMO_METHODS = (("ce", "CE"), ("mwnet", "MW-Net"))


def run_demo(args: argparse.Namespace) -> int:
    from mwnet.experiment.config import apply_overrides, config_to_dict, load_config, resolve_config
    from mwnet.experiment.runner import holds_run
    from mwnet.plots import plot_accuracy, read_metrics

    if args.epochs is not None and args.epochs < 1:
        raise CLIError(f"--epochs must be a positive integer, got {args.epochs}")
    preset = "demo"
    if not _fashion_mnist_available(args.data_dir):
        print("Fashion-MNIST was not found; running the demo on scikit-learn's 8x8 digits instead "
              "(install it with `make data` or `mwnet data --help`).", flush=True)
        preset = "demo-digits"
    out = Path(args.out)
    overrides: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    summaries = {}
    started = time.perf_counter()
    for method, label in _DEMO_METHODS:
        config = resolve_config(preset, {**overrides, "method": method})
        run_dir = out / method
        resume = overwrite = False
        if holds_run(run_dir) and not args.overwrite:
            saved = load_config(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
            same = saved is not None and _same_demo(config_to_dict(saved), config_to_dict(config))
            if same and (run_dir / "summary.json").is_file():
                print(f"{label}: reusing the finished run in {run_dir} (--overwrite retrains)", flush=True)
                summaries[label] = json.loads((run_dir / "summary.json").read_text())
                continue
            resume = same and (run_dir / "checkpoint.pt").is_file()
            overwrite = not resume
            if resume:
                config = apply_overrides(saved, {"device": args.device})
        elif holds_run(run_dir):
            overwrite = True
        print(f"== {label} ({config.dataset}, {config.noise} noise, {config.epochs} epochs) -> {run_dir}", flush=True)
        summary = _train_cli(config, run_dir, resume=resume, overwrite=overwrite, tensorboard=False,
                             quiet=args.quiet)
        if summary is None:
            print(f"mwnet: demo interrupted; run `mwnet demo --out {out}` again to continue", file=sys.stderr)
            return 130
        summaries[label] = summary
    elapsed = time.perf_counter() - started
    figure = out / "test_accuracy.png"
    plot_accuracy({label: read_metrics(out / method) for method, label in _DEMO_METHODS}, figure,
                  f"{summaries['CE']['dataset']}, {summaries['CE']['noise']} label noise")
    print()
    print(demo_table(summaries))
    print()
    print(f"{elapsed:.0f} s. Figures: {figure}, {out / 'mwnet' / 'figures'}/ (weighting function, weights of clean "
          f"vs corrupted samples); suspected label errors: {out / 'mwnet' / 'suspects.csv'}")
    return 0


def demo_table(summaries: dict[str, dict]) -> str:
    """A Markdown table of the demo's runs."""
    rows = ["| method | best test acc | last test acc | mean weight clean / corrupted | weight AUROC | train time |",
            "|---|---|---|---|---|---|"]
    for label, s in summaries.items():
        clean, corrupted = s.get("weight_mean_clean"), s.get("weight_mean_corrupted")
        weights = "—" if clean is None else f"{clean:.3f} / {corrupted:.3f}"
        auroc = s.get("weight_auroc")
        auroc_text = "—" if auroc is None or s.get("method") == "ce" else f"{auroc:.3f}"
        rows.append(f"| {label} | {s['best_test_acc']:.2f} % | {s['last_test_acc']:.2f} % | {weights} | "
                    f"{auroc_text} | {s['train_seconds']:.0f} s |")
    return "\n".join(rows)


def _same_demo(saved: dict, wanted: dict) -> bool:
    return all(saved.get(k) == v for k, v in wanted.items() if k not in ("device", "data_dir"))


def _fashion_mnist_available(data_dir: str | None) -> bool:
    from mwnet.data import load_dataset

    try:
        load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
