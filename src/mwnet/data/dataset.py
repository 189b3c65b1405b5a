"""The `Dataset` every source returns, and what every source builds one with: label checks, exact per-channel
statistics, the fixed hold-out test split, one-line error text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_HOLDOUT_FRACTION = 0.2  # test share carved (seed 0) where a source has no test split
# More classes than any real data set has (ImageNet-21k: 21,841): a label of 10⁹ is a corrupt file, not 10⁹ classes.
MAX_CLASSES = 100_000


class ClassesAndShape:
    """`num_classes` and `input_shape` of anything holding `classes` and `x_train` (a Dataset, a Split)."""

    classes: Any
    x_train: Any

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])


@dataclass
class Dataset(ClassesAndShape):
    """A data set as loaded: train and test (and, where the source ships one, a clean meta set).

    Images are uint8 (N, C, H, W) tensors or a `LazyImages`; tables float32 (N, D); labels int64 (N,).
    `mean`/`std` are per-channel statistics of the images scaled to [0, 1] (None for tables and float arrays).
    `y_train_true` holds the true training labels where a source gives noisy ones and the truth is known.

    Where trusted labels come from (a meta set is carved only from these, `splits.make_split`):
    `labels_verified`: the training labels are clean as given (the built-in data sets, before any corruption);
    `y_train_true`: rows whose given label equals it are verified; `trusted`: bool (N,) marking rows whose given
    label the user verified, described by `trusted_source`. `meta_source` says where a shipped meta set comes from.
    `train_ids` / `meta_ids`: each sample's origin in the source (row index in the file, or path relative to the
    folder), a numpy array aligned with `x_train` / `x_meta` [None: its position in the training set].
    """

    name: str
    classes: list[str]
    x_train: Any
    y_train: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    x_meta: Any = None
    y_meta: torch.Tensor | None = None
    y_train_true: torch.Tensor | None = None
    source: str = ""
    labels_verified: bool = False
    trusted: torch.Tensor | None = None
    trusted_source: str = ""
    meta_source: str = ""
    train_ids: np.ndarray | None = None
    meta_ids: np.ndarray | None = None



def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """ValueError naming `where` when a label is outside [0, num_classes)."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"label {bad} out of range [0, {num_classes}): {where}")


def check_num_classes(num_classes: int, where: str) -> None:
    """ValueError naming `where` when labels or class names imply more than MAX_CLASSES classes."""
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{num_classes} classes (labels up to {num_classes - 1}), more than the {MAX_CLASSES} "
                         f"mwnet supports: {where}")


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1], from a 256-bin histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum().clamp_min(1.0)
        mean = float((counts * values).sum() / total)
        var = float((counts * values**2).sum() / total) - mean**2
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5 or 1.0)  # a constant channel keeps std 1 (no division by zero)
    return tuple(means), tuple(stds)


def holdout_split(n: int, fraction: float = _HOLDOUT_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) index tensors, sorted: a fixed seed-0 permutation, so every run sees the same test set."""
    perm = np.random.default_rng(0).permutation(n)
    n_test = math.ceil(n * fraction)  # as scikit-learn rounds a test fraction
    return torch.from_numpy(np.sort(perm[n_test:])), torch.from_numpy(np.sort(perm[:n_test]))


def one_line(value: object) -> str:
    """`value` as text on one line: library errors are one line (the CLI prints them as they are)."""
    return " ".join(str(value).split())
