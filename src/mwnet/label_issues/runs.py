"""A run directory's training samples, ranked without training; and the ranking as CSV and JSON files."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.label_issues.ranking import LabelIssues, _score_samples, rank_from_scores

# suspects.csv columns that may say where a sample came from (its row in the source file or its image path).
_SOURCE_COLUMNS = ("source_id", "path", "source")


class MissingRunFileError(ValueError):
    """A run directory lacks a file the ranking needs. Attributes: path (the missing file)."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"no {path.name} in {path.parent}: {why}")


@dataclass(frozen=True)
class RunSamples:
    """Every training sample of a run under its final model, N rows in ascending data-set index.

    Attributes:
        run_dir: the run directory.
        ids: (N,) int64 indices into the data set's training set.
        losses: (N,) float64 losses of the final model on the given labels (eval mode).
        weights: (N,) float64 the weights the method gives them now (1 for methods without weights).
        given_labels: (N,) int64 the labels trained on (possibly wrong).
        true_labels: (N,) int64 the true labels where the run knows them (injected or shipped noise), else None.
        sources: (N,) where each sample came from (a row number or an image path, as text) where the run records
            it, else None.
    """

    run_dir: Path
    ids: np.ndarray
    losses: np.ndarray
    weights: np.ndarray
    given_labels: np.ndarray
    true_labels: np.ndarray | None
    sources: np.ndarray | None


def read_run_samples(run_dir: str | Path, *, device: str = "auto") -> RunSamples:
    """The training samples of a run directory of `mwnet train`, without training.

    Reads suspects.csv; for a run stopped before its end, which has none, scores the training set with the model
    and method of checkpoint.pt (rebuilding the split from config.json; `device` runs the model there).

    Raises:
        MissingRunFileError: neither suspects.csv nor checkpoint.pt with its config.json; FileNotFoundError: no
            such directory; ValueError: an unreadable file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run directory: {run_dir}")
    if (run_dir / "suspects.csv").is_file():
        samples = _read_suspects(run_dir)
    elif (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file():
        samples = _score_checkpoint(run_dir, device)
    else:
        raise MissingRunFileError(run_dir / "suspects.csv", "the run has not finished, and there is no "
                                  "checkpoint.pt with its config.json to score the training set from")
    order = np.argsort(samples.ids, kind="stable")
    return RunSamples(run_dir, *(None if a is None else a[order] for a in (
        samples.ids, samples.losses, samples.weights, samples.given_labels, samples.true_labels, samples.sources)))


def label_issues_from_run(run: str | Path | RunSamples, *, score: str = "auto", threshold: str | float = "gmm",
                          last_epochs: int = 5, device: str = "auto") -> LabelIssues:
    """Rank the training samples of a run directory of `mwnet train` (or its `RunSamples`), without training.

    Reads the samples with `read_run_samples`. score="mean-weight" averages the weighting functions V that
    metrics.jsonl records for the last `last_epochs` epochs [5], each read at the samples' final losses (linear
    interpolation on the recorded grid). Weights equal for every sample (plain CE, focal) are left out: such runs
    rank by loss.

    Returns:
        A `LabelIssues` over the training samples in ascending data-set index; `ids` holds those indices.
    Raises:
        MissingRunFileError: suspects.csv and checkpoint.pt + config.json are absent, or metrics.jsonl for
            "mean-weight"; ValueError: an unreadable file, or arguments as in `rank_from_scores`.
    """
    if isinstance(last_epochs, bool) or not isinstance(last_epochs, int) or last_epochs < 1:
        raise ValueError(f"last_epochs must be a positive integer, got {last_epochs!r}")
    samples = run if isinstance(run, RunSamples) else read_run_samples(run, device=device)
    rows = None if np.ptp(samples.weights) == 0 else samples.weights
    if rows is None and score in ("weight", "mean-weight"):
        raise ValueError(f"{samples.run_dir} gives every sample the same weight (a method without a weighting "
                         f"function): rank by score 'loss' or 'auto'")
    if score == "mean-weight":
        rows = _weight_curves(samples.run_dir / "metrics.jsonl", samples.losses, last_epochs)
    return rank_from_scores(samples.losses, rows, score=score, threshold=threshold, ids=samples.ids)


def label_issues_csv(issues: LabelIssues, samples: RunSamples) -> str:
    """Every sample, most suspect first, as CSV text: rank, id (the sample's source row or path where the run
    records it, else its index), index, score, loss, weight, given_label, is_issue (within the estimated
    num_issues), and true_label, corrupted where the run knows the truth. `issues` must rank `samples`."""
    _check_same_samples(issues, samples)
    truth = samples.true_labels
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["rank", "id", "index", "score", "loss", "weight", "given_label", "is_issue"]
                    + ([] if truth is None else ["true_label", "corrupted"]))
    weights = samples.weights if issues.weights is None else issues.weights
    for rank, i in enumerate(issues.ranking, start=1):
        index = int(samples.ids[i])
        row = [rank, index if samples.sources is None else samples.sources[i], index, f"{issues.scores[i]:.6g}",
               f"{samples.losses[i]:.6g}", f"{weights[i]:.6g}", int(samples.given_labels[i]),
               int(rank <= issues.num_issues)]
        if truth is not None:
            row += [int(truth[i]), int(truth[i] != samples.given_labels[i])]
        writer.writerow(row)
    return text.getvalue()


def label_issues_summary(issues: LabelIssues, samples: RunSamples) -> dict[str, Any]:
    """The ranking in brief, JSON-ready: score, threshold, number of issues, their ids (most suspect first) and,
    where the run knows the truth, how well the ranking finds the corrupted labels: the AUROC of the ranking (of
    its order, ties broken as it breaks them: saturated weights tie many samples that the loss then orders),
    precision and recall of the estimated issues, and precision in the top k, k the number of corrupted labels."""
    from mwnet.experiment.metrics import auroc

    _check_same_samples(issues, samples)
    summary: dict[str, Any] = {
        "run_dir": str(samples.run_dir),
        "num_samples": int(issues.ranking.size),
        "score": issues.score_name,
        "threshold": issues.threshold if math.isfinite(issues.threshold) else None,
        "num_issues": issues.num_issues,
        "spearman_weight_loss": issues.spearman,
        "warning": issues.warning,
        "issue_ids": [int(i) for i in issues.issue_ids],
        "issue_sources": None if samples.sources is None else [str(s) for s in samples.sources[issues.indices]],
        "truth": None,
    }
    if samples.true_labels is not None:
        corrupted = samples.true_labels != samples.given_labels
        k = int(corrupted.sum())
        found = int(corrupted[issues.indices].sum())
        top = int(corrupted[issues.ranking[:k]].sum())
        summary["truth"] = {
            "num_corrupted": k,
            "auroc": auroc(ranking_scores(issues.ranking), corrupted),
            "precision": found / issues.num_issues if issues.num_issues else None,
            "recall": found / k if k else None,
            "precision_at_k": top / k if k else None,
        }
    return summary


def ranking_scores(ranking: np.ndarray) -> np.ndarray:
    """(N,) a score per position whose descending order is `ranking` without ties: N for the first, 1 for the
    last."""
    scores = np.empty(ranking.size, dtype=np.float64)
    scores[ranking] = np.arange(ranking.size, 0, -1)
    return scores


def write_label_issues(issues: LabelIssues, samples: RunSamples, *, csv_path: str | Path | None = None,
                       json_path: str | Path | None = None) -> None:
    """Write `label_issues_csv` to csv_path and `label_issues_summary` to json_path (each atomically, if given)."""
    from mwnet.experiment.files import write_atomic

    if csv_path is not None:
        write_atomic(csv_path, label_issues_csv(issues, samples))
    if json_path is not None:
        write_atomic(json_path, json.dumps(label_issues_summary(issues, samples), indent=2) + "\n")


def _check_same_samples(issues: LabelIssues, samples: RunSamples) -> None:
    if issues.ids.shape != samples.ids.shape or not np.array_equal(issues.ids, samples.ids):
        raise ValueError("the label issues rank other samples than the run's (rank them with "
                         "label_issues_from_run of the same samples)")


def _read_suspects(run_dir: Path) -> RunSamples:
    path = run_dir / "suspects.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in ("index", "weight", "loss", "given_label") if not rows or c not in rows[0]]
    if missing:
        raise ValueError(f"{path} has no samples or lacks the column(s) {', '.join(missing)}")
    source = next((c for c in _SOURCE_COLUMNS if c in rows[0]), None)
    try:
        ids, given = (np.array([int(r[c]) for r in rows], dtype=np.int64) for c in ("index", "given_label"))
        losses, weights = (np.array([float(r[c]) for r in rows]) for c in ("loss", "weight"))
        truth = np.array([int(r["true_label"]) for r in rows], dtype=np.int64) if "true_label" in rows[0] else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unreadable {path}: {exc}") from None
    sources = None if source is None else np.array([r[source] for r in rows], dtype=object)
    return RunSamples(run_dir, ids, losses, weights, given, truth, sources)


def _score_checkpoint(run_dir: Path, device: str) -> RunSamples:
    """The training samples under the model and method saved in checkpoint.pt."""
    from mwnet.data import BatchLoader
    from mwnet.experiment.build import build, resolve_device
    from mwnet.experiment.checkpoint import load_checkpoint
    from mwnet.experiment.config import load_config
    from mwnet.experiment.loop import knows_truth

    config = load_config(run_dir / "config.json")
    if ":" in config.model:  # a file names no code mwnet imports (docs/reliability.md)
        raise ValueError(f"{run_dir / 'config.json'} names your own model {config.model!r}: score it from your code "
                         f"with mwnet.label_issues.rank_label_issues(model, weight_net, ...)")
    setup = build(config, resolve_device(device))
    state = load_checkpoint(run_dir / "checkpoint.pt", map_location=setup.device)
    try:
        setup.model.load_state_dict(state["model"])
        setup.method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{run_dir / 'checkpoint.pt'} does not match its config.json ({str(exc)[:200]})") from None
    split = setup.split
    loader = BatchLoader(split.x_train, split.y_train, batch_size=setup.config.eval_batch_size, shuffle=False,
                         device=setup.device, mean=split.mean, std=split.std)
    losses, _ = _score_samples(setup.model, None, loader, None, 1, setup.device, None)
    y = torch.as_tensor(split.y_train, device=setup.device)
    with torch.no_grad():
        weights = setup.method.sample_weights(torch.as_tensor(losses, dtype=torch.float32, device=setup.device), y)
    sources = None if split.source_ids is None else np.array([str(s) for s in split.source_ids], dtype=object)
    return RunSamples(run_dir, np.asarray(split.train_index, dtype=np.int64), losses,
                      weights.double().cpu().numpy(), np.asarray(split.y_train, dtype=np.int64),
                      np.asarray(split.y_true, dtype=np.int64) if knows_truth(split) else None, sources)


def _weight_curves(path: Path, losses: np.ndarray, last_epochs: int) -> np.ndarray:
    """(E, N) the weighting functions metrics.jsonl records for the last E ≤ last_epochs epochs, at `losses`."""
    if not path.is_file():
        raise MissingRunFileError(path, "score='mean-weight' averages the weighting functions it records")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        curves = [np.interp(losses, np.asarray(c["loss"], float), np.asarray(c["weight"], float))
                  for c in (r.get("weight_curve") for r in records) if c]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise ValueError(f"unreadable weight curves in {path}") from None
    if not curves:
        raise ValueError(f"{path} records no weighting function: score='mean-weight' needs a method with one (mwnet)")
    return np.stack(curves[-last_epochs:])
