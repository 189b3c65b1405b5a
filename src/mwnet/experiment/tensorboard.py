"""TensorBoard events of a run (`mwnet train --tensorboard`, needs the tensorboard package).

One event per epoch, under grouped tags: `train/…` (lr, loss, accuracy on the given labels, meta loss), `test/…`
(loss, accuracy), `meta_set/…` (the accuracy and loss the model is selected on) and `weights/…` (the mean weight,
clean vs corrupted where the truth is known, the AUROCs, a histogram of the weights, and the learned weighting
function V(ℓ) drawn as an image). Everything comes from the epoch's metrics.jsonl line, so the events say what
the run directory says.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

# metrics.jsonl key → TensorBoard tag.
SCALAR_TAGS = {
    "lr": "train/lr", "train_loss": "train/loss", "train_acc": "train/acc", "train_objective": "train/objective",
    "meta_loss": "train/meta_loss", "train_fit_corrupted": "train/fit_corrupted",
    "test_loss": "test/loss", "test_acc": "test/acc", "best_test_acc": "test/best_acc",
    "meta_set_acc": "meta_set/acc", "meta_set_loss": "meta_set/loss",
    "weight_mean": "weights/mean", "weight_mean_clean": "weights/mean_clean",
    "weight_mean_corrupted": "weights/mean_corrupted", "weight_auroc": "weights/auroc",
    "loss_auroc": "weights/loss_auroc",
}


class TensorBoardLog:
    """A `SummaryWriter` in `log_dir` that takes metrics.jsonl records (`purge_step`: as SummaryWriter's)."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write_epoch(self, metrics: dict) -> None:
        step = int(metrics["epoch"])
        for key, tag in SCALAR_TAGS.items():
            if isinstance(metrics.get(key), (int, float)):
                self.writer.add_scalar(tag, metrics[key], step)
        hist = metrics.get("weight_hist") or {}
        for part in ("all", "clean", "corrupted"):
            if part in hist:
                self._histogram(f"weights/histogram_{part}", hist["edges"], hist[part], step)
        curve = metrics.get("weight_curve")
        if curve and np.ptp(curve["weight"]) > 0:  # a constant V (plain CE) has nothing to show
            self.writer.add_image("weights/V(loss)", curve_image(curve, step), step, dataformats="HWC")
        self.writer.flush()

    def _histogram(self, tag: str, edges: list[float], counts: list[int], step: int) -> None:
        """The recorded histogram as it is (sum and sum of squares from the bin centres)."""
        counts_ = np.asarray(counts, dtype=np.float64)
        if counts_.sum() == 0:
            return
        centres = np.array([(a + b) / 2 for a, b in itertools.pairwise(edges)])
        self.writer.add_histogram_raw(tag, min=float(edges[0]), max=float(edges[-1]), num=int(counts_.sum()),
                                      sum=float(centres @ counts_), sum_squares=float(centres**2 @ counts_),
                                      bucket_limits=[float(e) for e in edges[1:]],
                                      bucket_counts=[int(c) for c in counts], global_step=step)

    def close(self) -> None:
        self.writer.close()


def curve_image(curve: dict, epoch: int) -> np.ndarray:
    """V(ℓ) over the recorded loss grid as an RGB image (H, W, 3) uint8 (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["loss"], curve["weight"], color="tab:blue")
    ax.set_xlabel("training loss ℓ")
    ax.set_ylabel("weight V(ℓ)")
    ax.set_title(f"epoch {epoch}")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
