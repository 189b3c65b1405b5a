"""`mwnet label-issues RUN_DIR`: which training labels are wrong, ranked from a run directory without training.

Rank every training sample of a run (finished, or interrupted: then its checkpoint scores the training set) by how
much the learned weighting distrusts its label, print the estimated number of label issues and the most suspect
ids, and write the whole ranking as CSV (--out) and a summary as JSON (--json). Scores: weight (1 − V(ℓ), the
final weight), mean-weight (V averaged over the last epochs), loss, or auto (weight while V decreases with the
loss, else loss, with a warning). A run without weights (ce, focal) is ranked by its loss.

    mwnet label-issues runs/mw --out issues.csv --json issues.json
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from mwnet.cli import CLIError, add_command
from mwnet.label_issues import SCORES, THRESHOLDS


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `mwnet train`")
    parser.add_argument("--score", choices=SCORES, default="auto",
                        help="what ranks the samples (higher = more suspect) [auto]")
    parser.add_argument("--threshold", default="gmm", metavar="gmm|midpoint|NUMBER",
                        help="how many are issues: gmm (a two-component mixture fitted to the scores), midpoint "
                             "(above the middle of the scores' range) or a score value [gmm]")
    parser.add_argument("--last-epochs", type=int, default=5, metavar="N",
                        help="epochs whose weighting functions --score mean-weight averages [5]")
    parser.add_argument("--out", metavar="FILE.csv", help="write every sample, most suspect first: rank, id, index, "
                        "score, loss, weight, given_label, is_issue (and true_label, corrupted where the run knows "
                        "the truth)")
    parser.add_argument("--json", metavar="FILE.json", help="write the summary: score, threshold, number of issues, "
                        "their ids, and detection quality where the run knows the truth")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="how many of the most suspect ids to "
                        "print [10]")
    parser.add_argument("--device", default="auto", help="where a checkpoint is scored (a run without "
                        "suspects.csv) [auto]")


def run(args: argparse.Namespace) -> int:
    from mwnet.label_issues import (
        LabelIssueWarning,
        label_issues_from_run,
        label_issues_summary,
        read_run_samples,
        write_label_issues,
    )

    threshold = _threshold(args.threshold)
    if args.last_epochs < 1:
        raise CLIError(f"--last-epochs must be a positive integer, got {args.last_epochs}")
    if args.top < 0:
        raise CLIError(f"--top must be >= 0, got {args.top}")
    outputs = [Path(p) for p in (args.out, args.json) if p]
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise CLIError("--out and --json name the same file")
    for path in outputs:
        if path.is_dir():
            raise CLIError(f"{path} is a directory, not a file")
        if not path.parent.is_dir():
            raise CLIError(f"no such directory for {path}: {path.parent}")

    samples = read_run_samples(args.run_dir, device=args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LabelIssueWarning)
        issues = label_issues_from_run(samples, score=args.score, threshold=threshold, last_epochs=args.last_epochs)
    for warning in caught:
        if issubclass(warning.category, LabelIssueWarning):
            print(f"mwnet: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    summary = label_issues_summary(issues, samples)
    rho = "" if issues.spearman is None else f" (Spearman ρ(weight, loss) = {issues.spearman:+.3f})"
    print(f"{args.run_dir}: {summary['num_samples']} training samples ranked by {issues.score_name}{rho}")
    cut = "" if not math.isfinite(issues.threshold) else f", score >= {issues.threshold:.4g}"
    print(f"estimated label issues: {issues.num_issues}{cut}")
    if issues.num_issues and args.top:
        ids = summary["issue_sources"] or summary["issue_ids"]
        shown = ", ".join(str(i) for i in ids[:args.top])
        print(f"most suspect ids: {shown}" + (" ..." if issues.num_issues > args.top else ""))
    truth = summary["truth"]
    if truth is not None and truth["auroc"] is not None:
        precision = "n/a" if truth["precision"] is None else f"{truth['precision']:.3f}"
        print(f"against the known truth ({truth['num_corrupted']} corrupted): AUROC {truth['auroc']:.4f}, "
              f"precision {precision} and recall {truth['recall']:.3f} of the estimated issues, precision "
              f"{truth['precision_at_k']:.3f} in the top {truth['num_corrupted']}")
    write_label_issues(issues, samples, csv_path=args.out, json_path=args.json)
    for path in outputs:
        print(f"wrote {path}")
    return 0


def _threshold(text: str) -> str | float:
    if text in THRESHOLDS:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CLIError(f"--threshold must be {', '.join(THRESHOLDS)} or a finite number, got {text!r}")
    return value
