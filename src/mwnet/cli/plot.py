"""`mwnet plot RUN_DIR ...`: redraw the figures of one or more run directories from their metrics.

Redraw RUN_DIR/figures/*.png (weighting function, weights of clean vs corrupted samples or per class, accuracy per
epoch) from RUN_DIR/metrics.jsonl (no checkpoint needed). With --compare, also draw the test accuracy of all the
given runs in one figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwnet.cli import add_command


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory written by `mwnet train`")
    parser.add_argument("--compare", metavar="PNG", help="also write the test accuracy of all runs to this file (.png "
                        "added when it has no suffix; a directory gets compare_test_accuracy.png)")


def run(args: argparse.Namespace) -> int:
    from mwnet.plots import plot_accuracy, plot_run, read_metrics, run_title

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:  # validate every input before drawing anything
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no such run directory: {run_dir}")
        if not read_metrics(run_dir):
            raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no epoch yet")
    compare = _compare_path(Path(args.compare)) if args.compare else None
    if compare is not None and not compare.parent.is_dir():
        raise FileNotFoundError(f"no such directory for --compare: {compare.parent}")
    for run_dir in run_dirs:
        for path in plot_run(run_dir):
            print(path)
    if compare is not None:
        plot_accuracy({f"{run_title(d)} [{d.name}]": read_metrics(d) for d in run_dirs}, compare)
        print(compare)
    return 0


def _compare_path(path: Path) -> Path:
    """The file --compare writes: PATH itself, PATH.png when it has no suffix, DIR/compare_test_accuracy.png for a
    directory (printed as written)."""
    if path.is_dir():
        return path / "compare_test_accuracy.png"
    return path if path.suffix else path.with_name(path.name + ".png")
