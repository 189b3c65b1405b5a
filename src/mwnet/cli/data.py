"""`mwnet data`: load a data set, split and corrupt it, print a summary.

Load a data set, carve the clean meta set, apply long-tail subsampling and label noise (the paper's protocols,
seeded) and print sizes, class counts and the empirical noise matrix.

    mwnet data --dataset fashion-mnist --noise flip2:0.4 --num-meta 1000 --seed 1 --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mwnet.cli import add_command
from mwnet.cli.flags import add_field_flag, flag


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist, mnist, cifar10, cifar100, digits, folder:PATH or arrays:PATH")
    parser.add_argument("--noise", default=None, help="label noise KIND:RATE, KIND in uniform, flip, flip2 "
                                                      "(e.g. uniform:0.4) [none]")
    parser.add_argument("--imbalance", type=float, default=1.0,
                        help="long-tail imbalance factor n_max / n_min, >= 1 [1: balanced, no subsampling]")
    meta = parser.add_mutually_exclusive_group()
    meta.add_argument("--num-meta", type=int, default=None, help="clean meta set size, spread evenly over classes")
    meta.add_argument("--meta-per-class", type=int, default=None, help="clean meta samples per class")
    for name in ("meta_from_unverified", "subsample_meta"):
        add_field_flag(parser, name)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="use a seeded random subset of this many training samples [all]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the long tail and the noise [0]")
    parser.add_argument("--data-dir", default=None,
                        help="where to look for (and download) the data first [$MWNET_DATA, ~/.cache/mwnet]")
    parser.add_argument("--no-download", action="store_true", help="never download; fail if the files are absent")
    parser.add_argument("--image-size", type=int, default=None,
                        help="folder:PATH only: resize images to this many pixels square [the first image's size]")
    for name in ("labels_csv", "trusted_csv"):
        add_field_flag(parser, name)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from mwnet.data import load_dataset, make_split, summarize_split

    for name in ("image_size", "labels_csv", "trusted_csv"):
        if getattr(args, name) is not None and not args.dataset.strip().lower().startswith("folder:"):
            raise ValueError(f"{flag(name)} applies to folder:PATH data sets only, not {args.dataset!r}")
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                      image_size=args.image_size, labels_csv=args.labels_csv, trusted_csv=args.trusted_csv)
    split = make_split(ds, noise=args.noise, imbalance=args.imbalance, num_meta=args.num_meta,
                       meta_per_class=args.meta_per_class, train_subset=args.train_subset, seed=args.seed,
                       meta_from_unverified=bool(args.meta_from_unverified),
                       subsample_shipped_meta=bool(args.subsample_meta))
    summary = summarize_split(split)
    summary["source"] = ds.source
    if args.json:
        print(json.dumps(summary))  # full precision: each matrix row sums to 1 up to float rounding
    else:
        print(format_summary(summary))
    return 0


def format_summary(s: dict[str, Any], max_matrix: int = 20) -> str:
    """The summary as a few aligned lines (the transition matrices only for up to `max_matrix` classes)."""
    k = s["num_classes"]
    lines = [
        f"data set     {s['dataset']}  ({s['source']})",
        f"input        {'x'.join(str(d) for d in s['input_shape'])}, {k} classes",
        f"sizes        train {s['train_size']}, meta {s['meta_size']}, test {s['test_size']}",
        f"train/class  {' '.join(str(c) for c in s['class_counts'])}",
        f"meta/class   {' '.join(str(c) for c in s['meta_class_counts'])}",
        f"meta source  {s['meta_source']}",
    ]
    if s["imbalance"] > 1:
        lines.append(f"long tail    IF {s['imbalance']:g} (actual max/min {s['imbalance_actual']:.4g})")
    noise = s["noise"] or "none"
    lines.append(f"noise        {noise}: {s['num_corrupted']} labels changed, rate {s['noise_rate_actual']:.4f} "
                 f"(expected {s['noise_rate_expected']:.4f})")
    if s["noise"] and k <= max_matrix:
        lines.append("transition matrix (rows = true class, empirical / nominal):")
        for i, (row, nominal) in enumerate(zip(s["transition_matrix"], s["nominal_transition_matrix"])):
            shown = "  no samples" if row is None else " ".join(f"{v:5.3f}" for v in row)
            lines.append(f"  {i:>3} {shown}  |  {' '.join(f'{v:5.3f}' for v in nominal)}")
    return "\n".join(lines)
