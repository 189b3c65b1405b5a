"""Train one configuration into a run directory: data → split → model → method → epochs → metrics → files.

    from mwnet.experiment import resolve_config, train
    summary = train(resolve_config("fmnist-uniform-40", {"method": "ce"}), "runs/ce")

The run directory holds config.json (resolved), metrics.jsonl (one line per epoch, deterministic: no wall-clock
figure ever goes there, so an interrupted-and-resumed run writes the same bytes as an uninterrupted one),
timing.jsonl (wall-clock per epoch), checkpoint.pt (every epoch, atomic), summary.json, suspects.csv and
figures/*.png. Accuracies are in percent; weight statistics come from the weights the real updates used during
the epoch (train mode, augmented batches).

Interrupts: SIGINT (Ctrl-C) between two iterations saves a mid-epoch checkpoint, with the loaders' positions,
and raises `TrainingInterrupted`; `train(..., resume=True)` continues exactly. A hard kill loses at most the
current epoch: resuming restarts it from the last epoch checkpoint and truncates metrics.jsonl to match.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mwnet.experiment.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mwnet.experiment.config import (
    RUN_FIELDS,
    TrainConfig,
    config_to_dict,
    load_config,
    method_arguments,
    validate_config,
)
from mwnet.experiment.metrics import loss_grid, per_class_accuracy, rounded, weight_statistics
from mwnet.methods import Method, MethodContext, create_method

CHECKPOINT_FORMAT = 1
# Files and folders a run writes; --overwrite removes exactly these, nothing else of the directory.
RUN_FILES = ("config.json", "metrics.jsonl", "timing.jsonl", "summary.json", "checkpoint.pt", "suspects.csv")
RUN_FOLDERS = ("figures", "tensorboard")
# Test hook: "kill@iteration:N", "int@iteration:N" or "kill@epoch-end:E" sends the signal to this process after
# global iteration N, or after epoch E's metrics line is written and before its checkpoint (resume tests).
FAULT_ENV = "MWNET_TEST_FAULT"

Log = Callable[[str], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved; `train(..., resume=True)` continues exactly."""

    def __init__(self, run_dir: Path, epoch: int, iteration: int) -> None:
        super().__init__(f"interrupted in epoch {epoch} at iteration {iteration}; checkpoint saved in {run_dir}")
        self.run_dir = run_dir
        self.epoch = epoch
        self.iteration = iteration


def holds_run(out: Path) -> bool:
    """Whether `out` already holds (part of) a run."""
    return out.is_dir() and any((out / name).exists() for name in RUN_FILES)


def resolve_device(requested: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; an unavailable explicit device is a ValueError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
    if requested == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available (use --device cpu)")
    return torch.device(requested)


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The default model for an input shape: mlp for tables, cnn up to 28 px, resnet32 up to 32 px, else resnet50."""
    if len(input_shape) != 3:
        return "mlp"
    side = max(input_shape[1:])
    return "cnn" if side <= 28 else "resnet32" if side <= 32 else "resnet50"


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          tensorboard: bool = False, progress: bool | None = False, log: Log | None = None) -> dict[str, Any]:
    """Train `config` into the run directory `out` and return the summary (also written to summary.json).

    Args:
        config: a validated TrainConfig (see `resolve_config`).
        out: the run directory; one that already holds a run is refused unless `resume` or `overwrite`.
        resume: continue the run in `out` from its checkpoint (the config must match the saved one, except for
            device and data_dir).
        overwrite: delete the run files in `out` first.
        tensorboard: also write TensorBoard events to out/tensorboard (needs the tensorboard package).
        progress: a tqdm bar per epoch [False]; None = only when stderr is a terminal.
        log: receives one line per epoch and a few status lines [silent].
    Raises:
        ValueError / FileNotFoundError: a bad config, data set or run directory; nothing is written then.
        TrainingInterrupted: SIGINT arrived; the checkpoint in `out` resumes the run.
    """
    log = log or (lambda _line: None)
    out = Path(out)
    validate_config(config)
    _check_run_directory(out, resume, overwrite)
    if tensorboard:
        _check_tensorboard()
    device = resolve_device(config.device)
    saved = load_config(out / "config.json") if resume else None
    if saved is not None:
        # The saved run decides the numbers; only the fields that say where to run may change.
        _check_same_run(saved, config, out)
        config = dataclasses.replace(saved, **{k: getattr(config, k) for k in RUN_FIELDS})

    _seed_everything(config.seed)
    setup = _build(config, device)
    config = setup.config

    state = _RunState()
    if resume:
        _restore(out / "checkpoint.pt", setup, state, device)

    # Everything is validated: from here on files are written.
    if overwrite:
        _remove_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "config.json", config_to_dict(config))
    if resume:
        _truncate_lines(out / "metrics.jsonl", state.epochs_done)
        _truncate_lines(out / "timing.jsonl", state.epochs_done)
        log(f"resuming {out} at epoch {state.epochs_done + 1}, iteration {state.iteration}")
    else:
        for name in ("metrics.jsonl", "timing.jsonl"):
            (out / name).write_text("")
        _save(setup, state, out)  # a run killed before its first epoch ends can be resumed too
    writer = _tensorboard_writer(out, state.epochs_done) if tensorboard else None
    show_bar = sys.stderr.isatty() if progress is None else progress
    try:
        with _sigint_flag() as interrupted:
            _train_epochs(setup, state, out, log, show_bar, writer, interrupted)
    finally:
        if writer is not None:
            writer.close()
    return _finish(setup, state, out, log)


# --------------------------------------------------------------------------------------------------------------
# Building the run
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
    config: TrainConfig
    device: torch.device
    split: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    method: Method
    loader: Any
    meta: Any
    test_loader: Any
    iterations_per_epoch: int
    total_iterations: int
    epochs: int


@dataclasses.dataclass
class _RunState:
    epochs_done: int = 0
    iteration: int = 0
    best_test_acc: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    resumes: int = 0
    epoch: _EpochRecord | None = None  # the epoch in progress (restored from a mid-epoch checkpoint)
    last_record: dict | None = None
    diverged: dict | None = None  # where training stopped on a non-finite loss


def _build(config: TrainConfig, device: torch.device) -> _Setup:
    """Load the data, split it, resolve "auto" fields and build model, optimizer, schedule, method and loaders."""
    from mwnet import models
    from mwnet.data import BatchLoader, MetaSampler, load_dataset, make_split

    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    split = make_split(dataset, noise=config.noise, imbalance=config.imbalance, num_meta=config.num_meta,
                       meta_per_class=config.meta_per_class, train_subset=config.train_subset, seed=config.seed)
    train_size = len(split.y_train)
    if train_size == 0:
        raise ValueError(f"the training set of {config.dataset} is empty after the split")
    iterations_per_epoch = math.ceil(train_size / config.batch_size)
    if config.iterations is not None:
        total = config.iterations
        epochs = math.ceil(total / iterations_per_epoch)
    else:
        epochs = config.epochs
        total = epochs * iterations_per_epoch
    model_name = auto_model(tuple(split.input_shape)) if config.model == "auto" else config.model
    config = dataclasses.replace(config, model=model_name, epochs=epochs)

    shape = tuple(split.input_shape)
    in_channels, input_size = (shape[0], shape[1]) if len(shape) == 3 else (int(np.prod(shape)), 1)
    model = models.create(model_name, in_channels=in_channels, num_classes=split.num_classes,
                          input_size=input_size, **config.model_options).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), gamma=config.lr_gamma)
    meta_size = 0 if split.y_meta is None else len(split.y_meta)
    counts = torch.bincount(torch.as_tensor(split.y_train), minlength=split.num_classes)
    context = MethodContext(num_classes=split.num_classes, class_counts=tuple(int(c) for c in counts),
                            train_size=train_size, meta_size=meta_size, epochs=epochs,
                            iterations_per_epoch=iterations_per_epoch, total_iterations=total, device=device)
    method = create_method(config.method, model, optimizer, context, **method_arguments(config))
    if method.uses_meta and meta_size == 0:
        raise ValueError(f"method {config.method!r} needs a clean meta set: give --num-meta or --meta-per-class")
    loader = BatchLoader(split.x_train, split.y_train, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         device=device, augment=config.augment, mean=split.mean, std=split.std)
    meta = None
    if meta_size:
        meta = MetaSampler(split.x_meta, split.y_meta, batch_size=min(config.meta_batch_size, meta_size),
                           seed=config.seed + 1, device=device, augment=config.augment, mean=split.mean,
                           std=split.std)
    test_loader = BatchLoader(split.x_test, split.y_test, batch_size=config.eval_batch_size, shuffle=False,
                              seed=0, device=device, augment=False, mean=split.mean, std=split.std)
    return _Setup(config, device, split, model, optimizer, scheduler, method, loader, meta, test_loader,
                  iterations_per_epoch, total, epochs)


# --------------------------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------------------------


class _EpochRecord:
    """Per-sample weights, losses and predictions of the epoch in progress, plus running sums (checkpointed)."""

    def __init__(self, n: int) -> None:
        self.weights = torch.zeros(n)
        self.losses = torch.zeros(n)
        self.predictions = torch.full((n,), -1, dtype=torch.long)
        self.visited = torch.zeros(n, dtype=torch.bool)
        self.objective_sum = 0.0
        self.steps = 0
        self.meta_loss_sum = 0.0
        self.meta_steps = 0
        self.seconds = 0.0
        self.lr = math.nan  # the lr of the epoch's last step

    def update(self, idx: torch.Tensor, result: Any) -> None:
        idx = idx.cpu()
        self.weights[idx] = result.weights.detach().float().cpu()
        self.losses[idx] = result.losses.detach().float().cpu()
        self.predictions[idx] = result.logits.argmax(1).cpu()
        self.visited[idx] = True
        self.objective_sum += float(result.loss)
        self.steps += 1
        if result.meta_updated and math.isfinite(result.meta_loss):
            self.meta_loss_sum += float(result.meta_loss)
            self.meta_steps += 1

    def state_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_state(cls, state: dict) -> _EpochRecord:
        record = cls(len(state["weights"]))
        vars(record).update(state)
        return record


def _train_epochs(setup: _Setup, state: _RunState, out: Path, log: Log, show_bar: bool, writer: Any,
                  interrupted: Callable[[], bool]) -> None:
    config, method = setup.config, setup.method
    n = len(setup.split.y_train)
    fault = _fault_hook()
    while state.epochs_done < setup.epochs:
        epoch = state.epochs_done  # 0-based index of the epoch in progress
        record = state.epoch if state.epoch is not None else _EpochRecord(n)
        state.epoch = record
        method.start_epoch(epoch)
        remaining = min(setup.iterations_per_epoch, setup.total_iterations - epoch * setup.iterations_per_epoch)
        bar = _progress_bar(show_bar, epoch, setup.epochs, remaining, record.steps)
        started = time.perf_counter()
        for x, y, idx in setup.loader:  # a restored loader continues the epoch where it stopped
            x_meta = y_meta = None
            if method.wants_meta():
                x_meta, y_meta = setup.meta.next()
            record.lr = float(setup.optimizer.param_groups[0]["lr"])  # the lr this step uses
            try:
                result = method.step(x, y, x_meta, y_meta)
            except ValueError as exc:
                if not str(exc).startswith("non-finite"):
                    raise
                # Divergence is an outcome of the method, not a broken run: stop and report it in the summary.
                state.diverged = {"epoch": epoch + 1, "iteration": state.iteration, "error": str(exc)}
                if bar is not None:
                    bar.close()
                log(f"diverged in epoch {epoch + 1} at iteration {state.iteration}: {exc}")
                return
            record.update(idx, result)
            state.iteration += 1
            if config.lr_unit == "iteration":
                setup.scheduler.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{_batch_accuracy(result, y):.1f}%", refresh=False)
            if fault is not None:
                fault("iteration", state.iteration)
            if remaining < setup.iterations_per_epoch and record.steps >= remaining:
                break  # the last, truncated epoch of a run counted in iterations
            if interrupted():
                record.seconds += time.perf_counter() - started
                state.train_seconds += time.perf_counter() - started
                _save(setup, state, out)
                if bar is not None:
                    bar.close()
                raise TrainingInterrupted(out, epoch + 1, state.iteration)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        record.seconds += elapsed
        state.train_seconds += elapsed
        lr = record.lr
        if config.lr_unit == "epoch":
            setup.scheduler.step()

        started = time.perf_counter()
        metrics = _epoch_metrics(setup, state, record, epoch, lr)
        eval_seconds = time.perf_counter() - started
        state.eval_seconds += eval_seconds
        _append_line(out / "metrics.jsonl", json.dumps(rounded(metrics)))
        samples = int(record.visited.sum())
        _append_line(out / "timing.jsonl", json.dumps({
            "epoch": epoch + 1, "train_seconds": round(record.seconds, 3), "eval_seconds": round(eval_seconds, 3),
            "samples_per_second": round(samples / record.seconds, 1) if record.seconds > 0 else None}))
        if writer is not None:
            _write_tensorboard(writer, metrics, epoch + 1)
        log(_epoch_line(metrics, setup.epochs, record.seconds))
        if fault is not None:
            fault("epoch-end", epoch + 1)
        state.epochs_done += 1
        state.epoch = None
        state.last_record = metrics
        _save(setup, state, out)
        if interrupted():
            raise TrainingInterrupted(out, epoch + 1, state.iteration)


def _epoch_metrics(setup: _Setup, state: _RunState, record: _EpochRecord, epoch: int, lr: float) -> dict:
    """The metrics.jsonl line of one finished epoch: deterministic numbers only."""
    split, method = setup.split, setup.method
    test = evaluate(setup.model, setup.test_loader, split.num_classes)
    if test["acc"] > state.best_test_acc:
        state.best_test_acc, state.best_epoch = test["acc"], epoch + 1
    visited = record.visited.numpy()
    given = np.asarray(split.y_train)[visited]
    truth = np.asarray(split.y_true)[visited]
    corrupted = np.asarray(split.corrupted, dtype=bool)[visited]
    predictions = record.predictions.numpy()[visited]
    weights = record.weights.numpy()[visited]
    losses = record.losses.numpy()[visited]
    metrics: dict[str, Any] = {
        "epoch": epoch + 1,
        "iteration": state.iteration,
        "lr": lr,
        "train_loss": float(np.mean(losses)) if losses.size else None,
        "train_objective": record.objective_sum / record.steps if record.steps else None,
        "meta_loss": record.meta_loss_sum / record.meta_steps if record.meta_steps else None,
        "train_acc": 100.0 * float(np.mean(predictions == given)) if given.size else None,
        "train_acc_clean": _percent(predictions[~corrupted] == given[~corrupted]),
        # Memorisation: how often the model predicts a corrupted sample's *wrong* given label.
        "train_fit_corrupted": _percent(predictions[corrupted] == given[corrupted]),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "test_acc_per_class": test["per_class"],
        "best_test_acc": state.best_test_acc,
        "best_epoch": state.best_epoch,
    }
    metrics.update(weight_statistics(weights, losses, truth, corrupted if _knows_truth(split) else None,
                                     split.num_classes))
    grid = loss_grid(losses)
    curve = method.weight_curve(torch.as_tensor(grid, dtype=torch.float32, device=setup.device))
    metrics["weight_curve"] = None if curve is None else {
        "loss": grid.tolist(), "weight": curve.detach().double().cpu().numpy().tolist()}
    return metrics


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, num_classes: int) -> dict[str, Any]:
    """Mean cross-entropy, top-1 accuracy (%) and per-class accuracy (%) of `model` in eval mode over `loader`."""
    was_training = model.training
    model.eval()
    loss_sum, predictions, targets = 0.0, [], []
    try:
        for x, y, _idx in loader:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            predictions.append(logits.argmax(1).cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
    pred = torch.cat(predictions).numpy()
    true = torch.cat(targets).numpy()
    per_class = [None if a is None else 100.0 * a for a in per_class_accuracy(pred, true, num_classes)]
    return {"loss": loss_sum / len(true), "acc": 100.0 * float(np.mean(pred == true)), "per_class": per_class}


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def _save(setup: _Setup, state: _RunState, out: Path) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(setup.config),
        "epochs_done": state.epochs_done,
        "iteration": state.iteration,
        "best_test_acc": state.best_test_acc,
        "best_epoch": state.best_epoch,
        "train_seconds": state.train_seconds,
        "eval_seconds": state.eval_seconds,
        "resumes": state.resumes,
        "epoch": None if state.epoch is None else state.epoch.state_dict(),
        "last_record": None if state.last_record is None else json.dumps(state.last_record),
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "method": setup.method.state_dict(),
        "loader": setup.loader.state_dict(),
        "meta": None if setup.meta is None else setup.meta.state_dict(),
        "rng": rng_state(),
    }
    save_checkpoint(checkpoint, out / "checkpoint.pt")


def _restore(path: Path, setup: _Setup, state: _RunState, device: torch.device) -> None:
    checkpoint = load_checkpoint(path, map_location=device)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an mwnet checkpoint of format {CHECKPOINT_FORMAT}: {path}")
    try:
        setup.model.load_state_dict(checkpoint["model"])
        setup.optimizer.load_state_dict(checkpoint["optimizer"])
        setup.scheduler.load_state_dict(checkpoint["scheduler"])
        setup.method.load_state_dict(checkpoint["method"])
        setup.loader.load_state_dict(checkpoint["loader"])
        if setup.meta is not None:
            setup.meta.load_state_dict(checkpoint["meta"])
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint does not match this run ({first[:200]}): {path}") from None
    set_rng_state(checkpoint["rng"])
    state.epochs_done = int(checkpoint["epochs_done"])
    state.iteration = int(checkpoint["iteration"])
    state.best_test_acc = float(checkpoint["best_test_acc"])
    state.best_epoch = int(checkpoint["best_epoch"])
    state.train_seconds = float(checkpoint["train_seconds"])
    state.eval_seconds = float(checkpoint["eval_seconds"])
    state.resumes = int(checkpoint["resumes"]) + 1
    state.epoch = None if checkpoint["epoch"] is None else _EpochRecord.from_state(_to_cpu(checkpoint["epoch"]))
    state.last_record = None if checkpoint["last_record"] is None else json.loads(checkpoint["last_record"])


def _to_cpu(state: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


# --------------------------------------------------------------------------------------------------------------
# The end of a run: suspects, summary, figures
# --------------------------------------------------------------------------------------------------------------


def _finish(setup: _Setup, state: _RunState, out: Path, log: Log) -> dict[str, Any]:
    from mwnet import __version__
    from mwnet.data import BatchLoader

    config, split = setup.config, setup.split
    # Suspects: every training sample scored once more in eval mode without augmentation.
    loader = BatchLoader(split.x_train, split.y_train, batch_size=config.eval_batch_size, shuffle=False, seed=0,
                         device=setup.device, augment=False, mean=split.mean, std=split.std)
    losses, weights = _score_training_set(setup.model, setup.method, loader, len(split.y_train))
    _write_suspects(out / "suspects.csv", split, weights, losses, _knows_truth(split))

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
    _write_json_atomic(out / "summary.json", summary)
    from mwnet.plots import plot_run

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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for rank, i in enumerate(order, start=1):
            row = [rank, int(index[i]), int(given[i]), f"{weights[i]:.6g}", f"{losses[i]:.6g}"]
            if with_truth:
                row += [int(truth[i]), int(corrupted[i])]
            writer.writerow(row)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# Small helpers: files, signals, progress, TensorBoard
# --------------------------------------------------------------------------------------------------------------


def _check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
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


def _check_same_run(saved: TrainConfig, config: TrainConfig, out: Path) -> None:
    """A resumed run must be the saved one: every field equal except where to run, the preset's name (a record),
    and the fields the runner resolves (model "auto"; epochs where iterations decide them)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in (*RUN_FIELDS, "preset"):
            continue
        if (f.name == "model" and config.model == "auto") or (f.name == "epochs" and config.iterations is not None):
            continue
        a, b = getattr(saved, f.name), getattr(config, f.name)
        if a != b:
            raise ValueError(f"cannot resume {out}: {f.name} is {a!r} in the saved run but {b!r} now")


def _remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).unlink()
    for name in RUN_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` complete lines of `path` (a killed run may have written more, or half a line)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    if len(complete) < keep:
        raise ValueError(f"{path} has {len(complete)} lines but the checkpoint has {keep} epochs")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(complete[:keep]))
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _sigint_flag() -> Iterator[Callable[[], bool]]:
    """While active, the first SIGINT only raises a flag (checked between iterations); a second one aborts."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _fault_hook() -> Callable[[str, int], None] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        name, rest = spec.split("@")
        where, number = rest.split(":")
        signum = {"kill": signal.SIGKILL, "int": signal.SIGINT}[name]
        target = (where, int(number))
    except (ValueError, KeyError):
        raise ValueError(f"{FAULT_ENV} must look like kill@iteration:N or int@epoch-end:E, got {spec!r}") from None

    def maybe_fire(point: str, count: int) -> None:
        if (point, count) == target:
            os.kill(os.getpid(), signum)

    return maybe_fire


def _progress_bar(show: bool, epoch: int, epochs: int, total: int, done: int) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _batch_accuracy(result: Any, y: torch.Tensor) -> float:
    return 100.0 * float((result.logits.argmax(1) == y).float().mean())


def _knows_truth(split: Any) -> bool:
    """Whether the true labels are known to differ from the given ones somewhere (injected or shipped noise)."""
    return split.noise is not None or bool(torch.as_tensor(split.corrupted).any())


def _percent(hits: np.ndarray) -> float | None:
    return 100.0 * float(np.mean(hits)) if hits.size else None


def _epoch_line(metrics: dict, epochs: int, seconds: float) -> str:
    parts = [f"epoch {metrics['epoch']}/{epochs}", f"lr {metrics['lr']:.3g}", f"loss {metrics['train_loss']:.4f}",
             f"train {metrics['train_acc']:.2f}%", f"test {metrics['test_acc']:.2f}%",
             f"best {metrics['best_test_acc']:.2f}%"]
    if metrics.get("weight_mean_clean") is not None:
        parts.append(f"weight clean {metrics['weight_mean_clean']:.3f} corrupted "
                     f"{metrics['weight_mean_corrupted']:.3f} (AUROC {metrics['weight_auroc']:.3f})")
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install mwnet[tensorboard]") from None


def _tensorboard_writer(out: Path, epochs_done: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops events a killed run wrote after its last checkpoint.
    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=epochs_done + 1 if epochs_done else None)


def _write_tensorboard(writer: Any, metrics: dict, step: int) -> None:
    for key in ("lr", "train_loss", "train_acc", "meta_loss", "test_loss", "test_acc", "weight_mean",
                "weight_mean_clean", "weight_mean_corrupted", "weight_auroc", "loss_auroc"):
        if metrics.get(key) is not None:
            writer.add_scalar(key, metrics[key], step)
    writer.flush()
