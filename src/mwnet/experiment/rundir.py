"""The run directory: which files a run writes, when, and what they hold.

config.json (the resolved config), metrics.jsonl (one line per epoch, deterministic: no wall-clock figure ever
goes there, so an interrupted-and-resumed run writes the same bytes as an uninterrupted one), timing.jsonl
(wall-clock per epoch), checkpoint.pt (every epoch, atomic), summary.json, suspects.csv (training samples ranked by
their final weight, lowest first), figures/*.png and, on request, tensorboard/. Accuracies are in percent.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import shutil
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
from mwnet.experiment.metrics import rounded
from mwnet.methods import Method

# Files and folders a run writes; --overwrite removes exactly these, nothing else of the directory.
RUN_FILES = ("config.json", "metrics.jsonl", "timing.jsonl", "summary.json", "checkpoint.pt", "suspects.csv")
RUN_FOLDERS = ("figures", "tensorboard")
_TENSORBOARD_SCALARS = ("lr", "train_loss", "train_acc", "meta_loss", "test_loss", "test_acc", "weight_mean",
                        "weight_mean_clean", "weight_mean_corrupted", "weight_auroc", "loss_auroc")


def holds_run(out: Path) -> bool:
    """Whether `out` already holds (part of) a run."""
    return out.is_dir() and any((out / name).exists() for name in RUN_FILES)


def run_status(run_dir: str | Path) -> Literal["done", "partial", "todo"]:
    """done: summary.json exists; partial: a checkpoint to resume from; todo: anything else."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file():
        return "partial"
    return "todo"


def check_run_directory(out: Path, resume: bool, overwrite: bool, tensorboard: bool) -> None:
    """ValueError unless `out` can take the run as asked (nothing is written)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is not a directory: {out}")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise ValueError(f"nothing to resume: no checkpoint.pt in {out}")
        if not (out / "config.json").is_file():
            raise ValueError(f"nothing to resume: no config.json in {out}")
    elif holds_run(out) and not overwrite:
        raise ValueError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install mwnet[tensorboard]") from None


class EpochFiles:
    """The files a run grows by one line per epoch: metrics.jsonl, timing.jsonl and TensorBoard events."""

    def __init__(self, out: Path, config: TrainConfig, *, epochs_done: int | None, overwrite: bool,
                 tensorboard: bool) -> None:
        """Start or continue the run files in `out`: `epochs_done` is None for a new run, else the epochs the
        checkpoint holds (lines a killed run wrote after its last checkpoint are dropped)."""
        self.out = out
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config_to_dict(config))
        for name in ("metrics.jsonl", "timing.jsonl"):
            if epochs_done is None:
                (out / name).write_text("")
            else:
                truncate_lines(out / name, epochs_done)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint.
            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"),
                                        purge_step=epochs_done + 1 if epochs_done else None)

    def write_epoch(self, metrics: dict, timing: dict) -> None:
        append_line(self.out / "metrics.jsonl", json.dumps(rounded(metrics)))
        append_line(self.out / "timing.jsonl", json.dumps(timing))
        if self.writer is not None:
            for key in _TENSORBOARD_SCALARS:
                if metrics.get(key) is not None:
                    self.writer.add_scalar(key, metrics[key], metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    _write_suspects(out / "suspects.csv", split, weights, losses, knows_truth(split))

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
        "last_test_acc": last.get("test_acc"),
        "last_test_acc_per_class": last.get("test_acc_per_class"),
        "weight_auroc": last.get("weight_auroc"),
        "loss_auroc": last.get("loss_auroc"),
        "weight_mean_clean": last.get("weight_mean_clean"),
        "weight_mean_corrupted": last.get("weight_mean_corrupted"),
        "train_size": len(split.y_train),
        "meta_size": 0 if split.y_meta is None else len(split.y_meta),
        "test_size": len(split.y_test),
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
    log(f"done: best test accuracy {summary['best_test_acc']:.2f}% (epoch {summary['best_epoch']}), last "
        f"{summary['last_test_acc']:.2f}%; {len(figures)} figures and suspects.csv in {out}")
    return summary


@torch.no_grad()
def _score_training_set(model: torch.nn.Module, method: Method, loader: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    losses = torch.zeros(n, dtype=torch.float64)
    weights = torch.zeros(n, dtype=torch.float64)
    try:
        for x, y, idx in loader:
            batch_losses = F.cross_entropy(model(x), y, reduction="none")
            losses[idx.cpu()] = batch_losses.double().cpu()
            weights[idx.cpu()] = method.sample_weights(batch_losses, y).double().cpu()
    finally:
        model.train(was_training)
    return losses.numpy(), weights.numpy()


def _write_suspects(path: Path, split: Any, weights: np.ndarray, losses: np.ndarray, with_truth: bool) -> None:
    """Training samples ranked by weight, lowest first; ties (e.g. plain CE, where every weight is 1) by loss,
    highest first, so the ranking always ends in "most suspicious first"."""
    order = np.lexsort((np.arange(len(weights)), -losses, weights))
    index = np.asarray(split.train_index)
    given = np.asarray(split.y_train)
    truth = np.asarray(split.y_true)
    corrupted = np.asarray(split.corrupted, dtype=bool)
    header = ["rank", "index", "given_label", "weight", "loss"] + (["true_label", "corrupted"] if with_truth else [])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for rank, i in enumerate(order, start=1):
        row = [rank, int(index[i]), int(given[i]), f"{weights[i]:.6g}", f"{losses[i]:.6g}"]
        if with_truth:
            row += [int(truth[i]), int(corrupted[i])]
        writer.writerow(row)
    write_atomic(path, text.getvalue())
