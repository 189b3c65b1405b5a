"""`mwnet demo`: CE vs Meta-Weight-Net on Fashion-MNIST with 40 % uniform label noise (a few CPU minutes).

Train plain cross-entropy and Meta-Weight-Net side by side on Fashion-MNIST with 40 % uniform label noise
(scikit-learn's digits where Fashion-MNIST is absent), print a table and write both run directories and the
figures. Re-running continues or reuses finished runs.

The two runs (OUT/ce, OUT/mwnet) are planned like a grid's cells (`mwnet.experiment.execution.plan_run`): a
finished run is reused, an interrupted one resumed; one of another config (other --epochs, --seed) is replaced only
with --overwrite (without it, the demo stops before training anything). Exit code 3 when a run diverged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from mwnet.cli import CLIError, add_command


def register(subparsers: Any) -> None:
    demo = add_command(subparsers, __doc__, run)
    demo.add_argument("--out", default="runs/demo", help="directory for the two runs and the figures [runs/demo]")
    demo.add_argument("--data-dir", metavar="DIR", help="where to look for Fashion-MNIST")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    demo.add_argument("--seed", type=int, default=0, help="seed [0]")
    demo.add_argument("--epochs", type=int, help="override the demo's number of epochs")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the runs in --out: a finished one, or one of another config (only the files "
                           "mwnet wrote)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


_METHODS = (("ce", "CE"), ("mwnet", "MW-Net"))


def run(args: argparse.Namespace) -> int:
    from mwnet.experiment.config import resolve_config
    from mwnet.experiment.grid import run_difference
    from mwnet.experiment.lock import RunLock

    fashion = _fashion_mnist_available(args.data_dir)
    overrides: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    preset = "demo" if fashion else "demo-digits"
    configs = {method: resolve_config(preset, {**overrides, "method": method}) for method, _ in _METHODS}
    if not fashion:
        print("Fashion-MNIST was not found; running the demo on scikit-learn's 8x8 digits instead "
              "(install it with `make data` or `mwnet data --help`).", flush=True)
    out = Path(args.out)
    for method, label in _METHODS:  # refuse before anything is trained: no run is ever replaced unasked
        difference = run_difference(out / method, configs[method])
        if difference is not None and not args.overwrite:
            raise CLIError(f"{out / method} holds a {label} run of another config ({difference}): pass --overwrite "
                           f"to replace it, or give another --out")
    with RunLock(out):  # one demo at a time in OUT; each run's directory is locked by `train` as well
        return _train_both(args, out, configs)


def _train_both(args: argparse.Namespace, out: Path, configs: dict[str, Any]) -> int:
    from mwnet.cli.train import exit_code, train_logged
    from mwnet.experiment.execution import plan_run
    from mwnet.experiment.files import read_json_object
    from mwnet.plots import plot_accuracy, read_metrics

    summaries = {}
    started = time.perf_counter()
    for method, label in _METHODS:
        config, run_dir = configs[method], out / method
        task = plan_run(label, config, run_dir, restart=args.overwrite)
        if task is None:
            print(f"{label}: reusing the finished run in {run_dir} (--overwrite retrains)", flush=True)
            summaries[label] = read_json_object(run_dir / "summary.json")
            continue
        print(f"== {label} ({config.dataset}, {config.noise} noise, {config.epochs} epochs) -> {run_dir}", flush=True)
        summary = train_logged(config, run_dir, resume=task.resume, overwrite=task.overwrite, tensorboard=False,
                               quiet=args.quiet)
        if summary is None:
            print(f"mwnet: demo interrupted; run `mwnet demo --out {out}` again to continue", file=sys.stderr)
            return exit_code([None])
        summaries[label] = summary
    elapsed = time.perf_counter() - started
    figure = out / "test_accuracy.png"
    plot_accuracy({label: read_metrics(out / method) for method, label in _METHODS}, figure,
                  f"{summaries['CE']['dataset']}, {summaries['CE']['noise']} label noise")
    print()
    print(demo_table(summaries))
    print()
    print(f"{elapsed:.0f} s. Figures: {figure}, {out / 'mwnet' / 'figures'}/ (weighting function, weights of clean "
          f"vs corrupted samples); suspected label errors: {out / 'mwnet' / 'suspects.csv'}")
    return exit_code(list(summaries.values()))


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


def _fashion_mnist_available(data_dir: str | None) -> bool:
    from mwnet.data import load_dataset

    try:
        load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    except (FileNotFoundError, ValueError):
        return False
    return True
