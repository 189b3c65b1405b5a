"""The epoch loop: steps of the method, the LR schedule, per-epoch metrics, and where a run may stop.

The loop writes no file itself: it hands each finished epoch's metrics to `LoopHooks.write_epoch` and asks
`LoopHooks.save` for a checkpoint after every epoch (and before stopping on Ctrl-C), so that what a run directory
holds is decided in one place (`mwnet.experiment.rundir`). Metrics are deterministic numbers only (no wall-clock
figure), so an interrupted-and-resumed run computes the same lines as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mwnet.errors import NonFiniteLossError
from mwnet.experiment.build import Setup
from mwnet.experiment.metrics import loss_grid, per_class_accuracy, weight_statistics
from mwnet.experiment.signals import TrainingInterrupted
from mwnet.module_state import eval_mode


class EpochRecord:
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
    def from_state(cls, state: dict) -> EpochRecord:
        record = cls(len(state["weights"]))
        vars(record).update(state)
        return record


@dataclass
class RunState:
    """Where a run stands (checkpointed with the model, optimizers and loaders)."""

    epochs_done: int = 0
    iteration: int = 0
    best_test_acc: float = -1.0
    best_epoch: int = 0
    # The model selected on the meta set (held-out, clean): its epoch, meta-set accuracy and loss, test accuracy.
    selected_epoch: int = 0
    selected_meta_acc: float = -1.0
    selected_meta_loss: float = math.inf
    selected_test_acc: float | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    resumes: int = 0
    epoch: EpochRecord | None = None  # the epoch in progress (restored from a mid-epoch checkpoint)
    last_record: dict | None = None
    diverged: dict | None = None  # where training stopped on a non-finite loss


@dataclass
class LoopHooks:
    """What the loop hands out and asks for.

    Attributes:
        run_dir: named by `TrainingInterrupted`.
        save: writes a checkpoint of the run as it stands.
        write_epoch: receives a finished epoch's metrics and its timing (wall-clock seconds).
        log: receives one line per epoch.
        interrupted: whether Ctrl-C arrived (checked between iterations).
        show_bar: a tqdm bar per epoch.
        on_event: receives ("iteration", n) after global iteration n, and ("epoch-end", e) after epoch e's
            metrics are written and before its checkpoint (tests kill the process there to check resuming).
        save_selected: receives an epoch's metrics when its model is the best on the meta set so far (written
            before the epoch's checkpoint: a resumed run recomputes the epoch and writes the same model).
    """

    run_dir: Path
    save: Callable[[], None]
    write_epoch: Callable[[dict, dict], None]
    log: Callable[[str], None]
    interrupted: Callable[[], bool]
    show_bar: bool = False
    on_event: Callable[[str, int], None] | None = None
    save_selected: Callable[[dict], None] | None = None


def train_epochs(setup: Setup, state: RunState, hooks: LoopHooks) -> None:
    """Train from where `state` stands to the last epoch, or until the loss diverges (recorded in `state`).

    Raises:
        TrainingInterrupted: Ctrl-C arrived; a checkpoint was saved first.
    """
    config, method = setup.config, setup.method
    event = hooks.on_event or (lambda _point, _count: None)
    n = len(setup.split.y_train)
    while state.epochs_done < setup.epochs:
        epoch = state.epochs_done  # 0-based index of the epoch in progress
        record = state.epoch if state.epoch is not None else EpochRecord(n)
        state.epoch = record
        method.start_epoch(epoch)
        remaining = min(setup.iterations_per_epoch, setup.total_iterations - epoch * setup.iterations_per_epoch)
        bar = _progress_bar(hooks.show_bar, epoch, setup.epochs, remaining, record.steps)
        started = time.perf_counter()
        try:
            for x, y, idx in setup.loader:  # a restored loader continues the epoch where it stopped
                x_meta = y_meta = None
                if method.wants_meta():
                    x_meta, y_meta = setup.meta.next()
                record.lr = float(setup.optimizer.param_groups[0]["lr"])  # the lr this step uses
                try:
                    result = method.step(x, y, x_meta, y_meta)
                except NonFiniteLossError as exc:
                    # Divergence is an outcome of the method, not a broken run: stop and report it in the summary.
                    state.diverged = {"epoch": epoch + 1, "iteration": state.iteration, "error": str(exc)}
                    break
                record.update(idx, result)
                state.iteration += 1
                if config.lr_unit == "iteration":
                    setup.scheduler.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{_batch_accuracy(result, y):.1f}%",
                                    refresh=False)
                event("iteration", state.iteration)
                if remaining < setup.iterations_per_epoch and record.steps >= remaining:
                    break  # the last, truncated epoch of a run counted in iterations
                if hooks.interrupted():
                    record.seconds += time.perf_counter() - started
                    state.train_seconds += time.perf_counter() - started
                    hooks.save()
                    raise TrainingInterrupted(hooks.run_dir, epoch + 1, state.iteration)
        finally:
            if bar is not None:
                bar.close()
        if state.diverged is not None:
            hooks.log(f"diverged in epoch {epoch + 1} at iteration {state.iteration}: {state.diverged['error']}")
            return
        elapsed = time.perf_counter() - started
        record.seconds += elapsed
        state.train_seconds += elapsed
        lr = record.lr
        if config.lr_unit == "epoch":
            setup.scheduler.step()

        started = time.perf_counter()
        if setup.ranks is not None:  # several processes: every rank's samples in the record (mwnet.experiment.ranks)
            setup.ranks.end_epoch(record, setup.model, epoch + 1)
        metrics = epoch_metrics(setup, state, record, epoch, lr)
        eval_seconds = time.perf_counter() - started
        state.eval_seconds += eval_seconds
        samples = int(record.visited.sum())
        hooks.write_epoch(metrics, {
            "epoch": epoch + 1, "train_seconds": round(record.seconds, 3), "eval_seconds": round(eval_seconds, 3),
            "samples_per_second": round(samples / record.seconds, 1) if record.seconds > 0 else None})
        if state.selected_epoch == epoch + 1 and hooks.save_selected is not None:
            hooks.save_selected(metrics)
        hooks.log(_epoch_line(metrics, setup.epochs, record.seconds))
        event("epoch-end", epoch + 1)
        state.epochs_done += 1
        state.epoch = None
        state.last_record = metrics
        hooks.save()
        if hooks.interrupted():
            raise TrainingInterrupted(hooks.run_dir, epoch + 1, state.iteration)


def epoch_metrics(setup: Setup, state: RunState, record: EpochRecord, epoch: int, lr: float) -> dict:
    """The metrics.jsonl line of one finished epoch: deterministic numbers only."""
    split, method = setup.split, setup.method
    test = evaluate(setup.model, setup.test_loader, split.num_classes, setup.ranks)
    if test["acc"] > state.best_test_acc:
        state.best_test_acc, state.best_epoch = test["acc"], epoch + 1
    # Model selection on held-out data: accuracy on the whole clean meta set, ties to the lower meta-set loss (a
    # meta set of 10 per class ties often), then to the earlier epoch.
    meta = None if setup.meta_eval_loader is None else evaluate(setup.model, setup.meta_eval_loader,
                                                                split.num_classes, setup.ranks)
    if meta is not None and (meta["acc"], -meta["loss"]) > (state.selected_meta_acc, -state.selected_meta_loss):
        state.selected_epoch, state.selected_test_acc = epoch + 1, test["acc"]
        state.selected_meta_acc, state.selected_meta_loss = meta["acc"], meta["loss"]
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
        "meta_set_acc": None if meta is None else meta["acc"],
        "meta_set_loss": None if meta is None else meta["loss"],
        "selected_epoch": state.selected_epoch or None,
    }
    metrics.update(weight_statistics(weights, losses, truth, corrupted if knows_truth(split) else None,
                                     split.num_classes))
    # The per-class statistics group by split.y_true: the truth only where the labels were verified.
    metrics["classes_by"] = "true" if setup.truth_known else "given"
    grid = loss_grid(losses)
    grid_tensor = torch.as_tensor(grid, dtype=torch.float32, device=setup.device)
    curve = method.weight_curve(grid_tensor)
    metrics["weight_curve"] = None if curve is None else {
        "loss": grid.tolist(), "weight": curve.detach().double().cpu().numpy().tolist()}
    heads = method.head_curves(grid_tensor)
    if heads is not None:  # a class-aware V: one curve per group of classes
        metrics["weight_curves_by_head"] = {"loss": grid.tolist(), "heads": {
            name: c.detach().double().cpu().numpy().tolist() for name, c in heads.items()}}
    return metrics


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, num_classes: int, ranks: Any = None) -> dict[str, Any]:
    """Mean cross-entropy, top-1 accuracy (%) and per-class accuracy (%) of `model` in eval mode over `loader`
    (with `ranks`, over every rank's block of it: `mwnet.experiment.ranks.Ranks.evaluation`)."""
    loss_sum, predictions, targets = 0.0, [], []
    with eval_mode(model):  # every sub-module's mode comes back as it was (a frozen-BN backbone stays frozen)
        for x, y, _idx in loader:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            predictions.append(logits.argmax(1).cpu())
            targets.append(y.cpu())
    if ranks is not None:
        return ranks.evaluation(loss_sum, predictions, targets, num_classes)
    pred = torch.cat(predictions).numpy()
    true = torch.cat(targets).numpy()
    per_class = [None if a is None else 100.0 * a for a in per_class_accuracy(pred, true, num_classes)]
    return {"loss": loss_sum / len(true), "acc": 100.0 * float(np.mean(pred == true)), "per_class": per_class}


def knows_truth(split: Any) -> bool:
    """Whether the true labels are known to differ from the given ones somewhere (injected or shipped noise)."""
    return split.noise is not None or bool(torch.as_tensor(split.corrupted).any())


def _progress_bar(show: bool, epoch: int, epochs: int, total: int, done: int) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _batch_accuracy(result: Any, y: torch.Tensor) -> float:
    return 100.0 * float((result.logits.argmax(1) == y).float().mean())


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
