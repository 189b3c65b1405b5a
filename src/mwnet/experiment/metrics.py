"""Numbers the runner records: AUROC, per-class accuracy, and the statistics of the learned sample weights.

Plain NumPy in float64 (no scikit-learn), so results do not depend on another library's version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HIST_BINS = 30
CURVE_POINTS = 64


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` as a detector of `positive` (ties count one half); None if one class.

    Mann–Whitney form: AUROC = (Σ ranks of positives − P(P+1)/2) / (P·N), with average ranks for ties.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank (1-based) over each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_class_accuracy(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy on each class's samples (None for a class absent from `targets`)."""
    correct = np.bincount(targets[predictions == targets], minlength=num_classes)
    total = np.bincount(targets, minlength=num_classes)
    return [None if t == 0 else float(c / t) for c, t in zip(correct, total)]


def weight_statistics(weights: np.ndarray, losses: np.ndarray, labels: np.ndarray, corrupted: np.ndarray | None,
                      num_classes: int) -> dict:
    """Statistics of one epoch's sample weights (the weights the real updates used).

    Args:
        weights, losses: (N,) per visited training sample.
        labels: (N,) true labels (classes for the per-class figures).
        corrupted: (N,) bool, True where the given label is wrong; None when the truth is unknown.
    Returns:
        weight_mean; weight_mean_clean / weight_mean_corrupted and weight_auroc (weight as a detector of clean
        samples) and loss_auroc (low loss as a detector of clean samples), None without both kinds of sample;
        weight_by_class (mean per class) and weight_quantiles_by_class (QUANTILES per class); weight_hist (a
        histogram over HIST_BINS equal bins of [min, max] weight: all / clean / corrupted counts).
    """
    weights = np.asarray(weights, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    out: dict = {"weight_mean": _mean(weights)}
    clean = None if corrupted is None else ~np.asarray(corrupted, dtype=bool)
    has_both = clean is not None and bool(clean.any()) and bool((~clean).any())
    out["weight_mean_clean"] = _mean(weights[clean]) if has_both else None
    out["weight_mean_corrupted"] = _mean(weights[~clean]) if has_both else None
    out["weight_auroc"] = auroc(weights, clean) if has_both else None
    out["loss_auroc"] = auroc(-losses, clean) if has_both else None
    out["weight_by_class"] = [_mean(weights[labels == k]) for k in range(num_classes)]
    out["weight_quantiles_by_class"] = [
        None if not (labels == k).any() else [float(q) for q in np.quantile(weights[labels == k], QUANTILES)]
        for k in range(num_classes)
    ]
    low, high = (float(weights.min()), float(weights.max())) if weights.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HIST_BINS + 1)
    hist = {"edges": edges.tolist(), "all": np.histogram(weights, edges)[0].tolist()}
    if has_both:
        hist["clean"] = np.histogram(weights[clean], edges)[0].tolist()
        hist["corrupted"] = np.histogram(weights[~clean], edges)[0].tolist()
    out["weight_hist"] = hist
    return out


def loss_grid(losses: np.ndarray, points: int = CURVE_POINTS) -> np.ndarray:
    """Evenly spaced losses over the observed range [0, max ℓ] where V(ℓ) is sampled for the figures."""
    top = float(np.max(losses)) if np.size(losses) else 1.0
    return np.linspace(0.0, top if top > 0 else 1.0, points)


def rounded(value, digits: int = 6):
    """`value` (number, list, dict, None) with floats rounded to `digits` significant digits, for compact JSON."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, np.generic):
        return rounded(value.item(), digits)
    return value


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None
