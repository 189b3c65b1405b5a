"""The run directory: which files a run writes, when, and what they hold.

config.json (the resolved config), metrics.jsonl (one line per epoch, deterministic: no wall-clock figure ever
goes there, so an interrupted-and-resumed run writes the same bytes as an uninterrupted one), timing.jsonl
(wall-clock per epoch), checkpoint.pt (every epoch, atomic), best_model.pt (the weights of the epoch chosen on the
meta set, `selection`), summary.json, suspects.csv (every training sample, most suspect first, with its row or path
in the source), figures/*.png and, on request, tensorboard/. Accuracies are in percent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from mwnet.experiment.build import Setup
from mwnet.experiment.config import TrainConfig, config_to_dict
from mwnet.experiment.files import append_line, truncate_lines, write_atomic, write_json
from mwnet.experiment.loop import RunState, evaluate, knows_truth
from mwnet.experiment.manifest import (
    MANIFEST,
    foreign_entries,
    holds_run,
    record_files,
    remove_recorded_files,
    remove_stale_temps,
)
from mwnet.experiment.metrics import rounded
from mwnet.experiment.selection import SELECTED_MODEL, selection_note
from mwnet.label_issues import LabelIssues, LabelIssueWarning, rank_from_scores
from mwnet.methods import Method
from mwnet.module_state import eval_mode

# Files a run writes (figures/*.png and tensorboard/ events besides), listed in its manifest before they are
# written; --overwrite removes exactly what the manifest lists (`mwnet.experiment.manifest`).
RUN_FILES = ("config.json", "metrics.jsonl", "timing.jsonl", "summary.json", "checkpoint.pt", "suspects.csv",
             "best_model.pt")
BEST_TEST_ACC_NOTE = ("the highest test accuracy over the epochs, as the paper reports it: chosen on the test set, so "
                      "an optimistic estimate, and its model is not kept; the model to use is best_model.pt "
                      "(selected_*: chosen on the meta set)")


def run_status(run_dir: str | Path) -> Literal["done", "partial", "todo"]:
    """done: summary.json exists; partial: a checkpoint to resume from; todo: anything else."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file():
        return "partial"
    return "todo"


def check_run_directory(out: Path, resume: bool, overwrite: bool,
                        tensorboard: bool) -> Literal["new", "resume", "restart"]:
    """What `train` is to do with `out`, or ValueError when it cannot (nothing is written); call it with the
    directory's lock held (`mwnet.experiment.lock`).

    "new": `out` is missing or empty; "resume": continue from checkpoint.pt; "restart": delete the run's files
    first (--overwrite, or --resume of a run killed before its first checkpoint was complete). A directory that
    holds anything but a run mwnet wrote (its manifest) is refused, with --overwrite too.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is not a directory: {out}")
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install mwnet[tensorboard]") from None
    if holds_run(out):
        if resume:
            if not (out / "config.json").is_file():
                raise ValueError(f"nothing to resume: no config.json in {out} (--overwrite starts the run again)")
            return "resume" if (out / "checkpoint.pt").is_file() else "restart"
        if not overwrite:
            raise ValueError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
        return "restart"
    if resume:
        if (out / "checkpoint.pt").is_file():
            raise ValueError(f"cannot resume {out}: it holds no {MANIFEST} (a run of an older mwnet?)")
        raise ValueError(f"nothing to resume: no checkpoint.pt in {out}")
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"{out} is not empty and holds no mwnet run ({shown}): give a new or empty --out"
                         + (" (--overwrite only replaces a run mwnet wrote)" if overwrite else ""))
    return "new"


class EpochFiles:
    """The files a run grows by one line per epoch: metrics.jsonl, timing.jsonl and TensorBoard events."""

    def __init__(self, out: Path, config: TrainConfig, *, epochs_done: int | None, overwrite: bool,
                 tensorboard: bool) -> None:
        """Start or continue the run files in `out`: `epochs_done` is None for a new run, else the epochs the
        checkpoint holds (lines a killed run wrote after its last checkpoint are dropped)."""
        from mwnet.plots import FIGURES

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            remove_recorded_files(out)  # what the manifest lists, nothing else of the directory
        else:
            remove_stale_temps(out)  # half-written files of a killed run
        record_files(out, [*RUN_FILES, *(f"figures/{name}" for name in FIGURES)])
        write_json(out / "config.json", config_to_dict(config))
        for name in ("metrics.jsonl", "timing.jsonl"):
            if epochs_done is None:
                (out / name).write_text("")
            else:
                truncate_lines(out / name, epochs_done)
        self.writer = None
        if tensorboard:
            from mwnet.experiment.tensorboard import TensorBoardLog

            # purge_step drops events a killed run wrote after its last checkpoint.
            # Event files are named by time, host and pid: recorded as soon as the writer has created them.
            folder = out / "tensorboard"
            before = _entries(folder)
            self.writer = TensorBoardLog(folder, purge_step=epochs_done + 1 if epochs_done else None)
            record_files(out, sorted(f"tensorboard/{name}" for name in _entries(folder) - before))

    def write_epoch(self, metrics: dict, timing: dict) -> None:
        append_line(self.out / "metrics.jsonl", json.dumps(rounded(metrics)))
        append_line(self.out / "timing.jsonl", json.dumps(timing))
        if self.writer is not None:
            self.writer.write_epoch(metrics)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _entries(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def finish_run(setup: Setup, state: RunState, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Write suspects.csv, summary.json and the figures, log one line, and return the summary."""
    from mwnet import __version__
    from mwnet.data import BatchLoader
    from mwnet.plots import plot_run

    config, split = setup.config, setup.split
    # Suspects: every training sample scored once more in eval mode without augmentation.
    loader = BatchLoader(split.x_train, split.y_train, batch_size=config.eval_batch_size, shuffle=False, seed=0,
                         device=setup.device, augment=False, mean=split.mean, std=split.std)
    losses, weights = _score_training_set(setup.model, setup.method, loader, len(split.y_train))
    issues = _write_suspects(out / "suspects.csv", split, weights, losses, knows_truth(split))

    last = dict(state.last_record or {})
    if state.diverged is not None:
        # The model that training stopped with is the run's last model.
        last["test_acc"] = evaluate(setup.model, setup.test_loader, split.num_classes)["acc"]
        last["test_acc_per_class"] = None
        last.setdefault("best_test_acc", last["test_acc"])
    full_epochs, rest = divmod(state.iteration, setup.iterations_per_epoch)
    samples = full_epochs * len(split.y_train) + min(rest * config.batch_size, len(split.y_train))
    summary = {
        "method": config.method,
        "dataset": config.dataset,
        "model": config.model,
        "noise": config.noise,
        "imbalance": config.imbalance,
        "seed": config.seed,
        "preset": config.preset,
        "epochs": setup.epochs,
        "iterations": state.iteration,
        "best_test_acc": last.get("best_test_acc"),
        "best_epoch": last.get("best_epoch"),
        "best_test_acc_note": BEST_TEST_ACC_NOTE,
        "selected_model": SELECTED_MODEL if state.selected_epoch else None,
        "selected_epoch": state.selected_epoch or None,
        "selected_meta_acc": state.selected_meta_acc if state.selected_epoch else None,
        "selected_test_acc": state.selected_test_acc,
        "selected_on": selection_note(config.method) if state.selected_epoch else None,
        "last_test_acc": last.get("test_acc"),
        "last_test_acc_per_class": last.get("test_acc_per_class"),
        "weight_auroc": last.get("weight_auroc"),
        "loss_auroc": last.get("loss_auroc"),
        "weight_mean_clean": last.get("weight_mean_clean"),
        "weight_mean_corrupted": last.get("weight_mean_corrupted"),
        "train_size": len(split.y_train),
        "meta_size": 0 if split.y_meta is None else len(split.y_meta),
        "meta_source": split.meta_source,
        "test_size": len(split.y_test),
        "suspects_score": issues.score_name,
        "suspects_num_issues": issues.num_issues,
        "suspects_spearman_weight_loss": issues.spearman,
        "suspects_warning": issues.warning,
        "num_classes": split.num_classes,
        "noise_rate_actual": float(np.mean(np.asarray(split.corrupted, dtype=bool))),
        "train_seconds": round(state.train_seconds, 3),
        "eval_seconds": round(state.eval_seconds, 3),
        "seconds_per_epoch": round(state.train_seconds / setup.epochs, 3),
        "samples_per_second": round(samples / state.train_seconds, 1) if state.train_seconds > 0 else None,
        "device": str(setup.device),
        "torch_threads": torch.get_num_threads(),
        "resumes": state.resumes,
        "mwnet_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "completed": state.diverged is None,
        "diverged": state.diverged,
    }
    summary = rounded(summary)
    write_json(out / "summary.json", summary)
    # A run that diverged in its first epoch has no epoch to draw.
    figures = plot_run(out) if state.epochs_done else []
    selected = "" if not state.selected_epoch else (
        f"; model chosen on the meta set: epoch {summary['selected_epoch']} (meta {summary['selected_meta_acc']:.2f}%"
        f", test {summary['selected_test_acc']:.2f}%) in {SELECTED_MODEL}")
    log(f"done: best test accuracy {summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']}, chosen on the "
        f"test set as the paper reports), last {summary['last_test_acc']:.2f}%{selected}; suspects.csv ranked by "
        f"{issues.score_name}, {len(figures)} figures in {out}")
    return summary


def data_line(setup: Setup) -> str:
    """One line saying what a run trains on: sizes, and where the meta set came from."""
    split = setup.split
    meta = 0 if split.y_meta is None else len(split.y_meta)
    return (f"data: {split.name}, {len(split.y_train)} training samples, test {len(split.y_test)}; meta set of "
            f"{meta}: {split.meta_source}")


@torch.no_grad()
def _score_training_set(model: torch.nn.Module, method: Method, loader: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    losses = torch.zeros(n, dtype=torch.float64)
    weights = torch.zeros(n, dtype=torch.float64)
    with eval_mode(model):
        for x, y, idx in loader:
            batch_losses = F.cross_entropy(model(x), y, reduction="none")
            losses[idx.cpu()] = batch_losses.double().cpu()
            weights[idx.cpu()] = method.sample_weights(batch_losses, y).double().cpu()
    return losses.numpy(), weights.numpy()


def _write_suspects(path: Path, split: Any, weights: np.ndarray, losses: np.ndarray,
                    with_truth: bool) -> LabelIssues:
    """Every training sample, most suspect first, ranked by `mwnet.label_issues.rank_from_scores(score="auto")`:
    by weight (1 − v) where V decreases with the loss, else by loss (right from the first epoch; the returned
    ranking's `warning` says why). Methods without weights (every weight equal: plain CE) rank by loss.

    Columns: rank, index (in the data set's training set), source_id (the sample's row in the source file or its
    image path), given_label, score (higher = more suspect; summary.json's suspects_score names it), weight, loss,
    is_issue (within the estimated number of wrong labels), and true_label, corrupted where the truth is known."""
    # A diverged model has non-finite losses: those rank first (loss just above the largest finite one, weight 0).
    finite = np.isfinite(losses)
    ranked_losses = np.where(finite, losses, (losses[finite].max() + 1.0) if finite.any() else 1.0)
    ranked_weights = np.where(np.isfinite(weights), weights, 0.0)
    with warnings.catch_warnings(record=True):  # the warning travels in the result (summary.json, stderr)
        warnings.simplefilter("always", LabelIssueWarning)
        issues = rank_from_scores(ranked_losses, None if np.ptp(ranked_weights) == 0 else ranked_weights,
                                  score="auto", ids=np.asarray(split.train_index, dtype=np.int64))
    sources = np.asarray(split.source_ids) if split.source_ids is not None else issues.ids
    given = np.asarray(split.y_train)
    truth = np.asarray(split.y_true)
    corrupted = np.asarray(split.corrupted, dtype=bool)
    header = ["rank", "index", "source_id", "given_label", "score", "weight", "loss", "is_issue"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header + (["true_label", "corrupted"] if with_truth else []))
    for rank, i in enumerate(issues.ranking, start=1):
        row = [rank, int(issues.ids[i]), sources[i], int(given[i]), f"{issues.scores[i]:.6g}", f"{weights[i]:.6g}",
               f"{losses[i]:.6g}", int(rank <= issues.num_issues)]
        if with_truth:
            row += [int(truth[i]), int(corrupted[i])]
        writer.writerow(row)
    write_atomic(path, text.getvalue())
    return issues
