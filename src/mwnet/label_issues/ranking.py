"""The ranking behind `mwnet.label_issues`: scores, order and the estimated number of issues (see the package
docstring for the rules)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.module_state import eval_mode

SCORES = ("auto", "weight", "mean-weight", "loss")
THRESHOLDS = ("gmm", "midpoint")
# "auto" trusts the weights only where they order the samples almost as a decreasing function of the loss: a
# class-aware V (CMW-Net) decreases within each class but sets each class its own level, and over all samples
# (ρ ≈ −0.05 measured, benchmarks/label-issues) ranks a rare class's wrong labels last.
AUTO_MAX_SPEARMAN = -0.9
WeightNet = Callable[[Tensor], Tensor]


class LabelIssueWarning(UserWarning):
    """The learned weights do not decrease with the loss, so they do not single out wrong labels (yet)."""


@dataclass(frozen=True)
class LabelIssues:
    """The ranked training samples and the estimated label issues; N samples, K = num_issues.

    Attributes:
        indices: (K,) int64 positions (into the arrays ranked) of the estimated issues, most suspect first.
        num_issues: K, the estimated number of wrong labels.
        ranking: (N,) int64 every position, most suspect first; indices == ranking[:K].
        scores: (N,) float64 suspicion per sample, higher = more suspect (see score_name).
        score_name: the score ranked by: "weight", "mean-weight" or "loss" ("auto" resolved).
        threshold: the score at and above which a sample counts as an issue (inf when none does).
        losses: (N,) float64 per-sample losses.
        weights: (N,) float64 the weights behind the weight scores (averaged for "mean-weight"), or None.
        spearman: Spearman's ρ(weights, losses); negative when V distrusts high losses; None without weights.
        warning: why the weights were not trusted (also issued as a LabelIssueWarning), or None.
        ids: (N,) int64 identifiers: positions by default, indices into the data set's training set for a run.
    """

    indices: np.ndarray
    num_issues: int
    ranking: np.ndarray
    scores: np.ndarray
    score_name: str
    threshold: float
    losses: np.ndarray
    weights: np.ndarray | None
    spearman: float | None
    warning: str | None
    ids: np.ndarray

    @property
    def issue_ids(self) -> np.ndarray:
        """(K,) the identifiers of the estimated issues, most suspect first."""
        return self.ids[self.indices]


def rank_from_scores(losses: Any, weights: Any = None, *, score: str = "auto", threshold: str | float = "gmm",
                     ids: Any = None) -> LabelIssues:
    """Rank N samples by suspicion from their losses and learned weights, and estimate how many labels are wrong.

    Args:
        losses: (N,) per-sample losses of the trained model on the given labels.
        weights: (N,) learned weights, (E, N) the weights under the last E epochs' weighting functions (oldest
            first; "weight" uses the last row, "mean-weight" their mean), or None (rank by loss) [None].
        score: "auto", "weight", "mean-weight" or "loss" (module docstring) ["auto"].
        threshold: "gmm", "midpoint" or a score value (module docstring) ["gmm"].
        ids: (N,) integer identifiers reported with the samples [positions 0..N-1].
    Raises:
        ValueError: naming the problem (a shape, NaN or inf, an unknown score or threshold, no weights to rank by).
    """
    losses = _finite_array(losses, "losses")
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"losses must have shape (N,) with N >= 1, got {losses.shape}")
    n = losses.size
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if not (threshold in THRESHOLDS if isinstance(threshold, str) else isinstance(threshold, (int, float))
            and not isinstance(threshold, bool) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)} or a finite number, got {threshold!r}")
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be {n} integers, shape ({n},), like losses; got {ids.dtype} {ids.shape}")
    rows = None if weights is None else np.atleast_2d(_finite_array(weights, "weights"))
    if rows is not None:
        if rows.ndim != 2 or rows.shape[1] != n or rows.shape[0] == 0:
            raise ValueError(f"weights must have shape ({n},) or (E, {n}) like losses ({n} samples), "
                             f"got {np.shape(weights)}")
    elif score in ("weight", "mean-weight"):
        raise ValueError(f"score={score!r} needs weights, got none (rank by score='loss' without them)")

    used = None if rows is None else rows.mean(0) if score == "mean-weight" else rows[-1]
    rho = None if used is None else spearman(used, losses)
    warning = None
    # NaN (constant weights) is not decreasing either.
    if used is not None and score != "loss" and not rho <= AUTO_MAX_SPEARMAN:
        trend = "are constant" if math.isnan(rho) else (
            f"do not decrease with the loss (Spearman ρ = {rho:+.3f}, not <= {AUTO_MAX_SPEARMAN})")
        warning = (f"the learned weights {trend} over the {n} samples, so ranking by weight would put clean samples "
                   f"before wrong ones (V has not learned to distrust high losses: early in training, or on a long "
                   f"tail, where it trusts the rare classes; or V sets each class its own level); ")
        if score == "auto":
            score, warning = "loss", warning + "ranking by loss instead"
        else:
            warning += f"ranking by {score} as asked; score='auto' or 'loss' would rank by loss"
        warnings.warn(warning, LabelIssueWarning, stacklevel=2)
    score = ("loss" if used is None else "weight") if score == "auto" else score
    scores = losses.copy() if score == "loss" else 1.0 - used
    # Most suspect first; ties to the higher loss, then to the lower position.
    ranking = np.lexsort((np.arange(n), -losses, -scores))
    cut = estimate_threshold(scores, threshold)
    num_issues = int(np.sum(scores >= cut))
    return LabelIssues(indices=ranking[:num_issues], num_issues=num_issues, ranking=ranking, scores=scores,
                       score_name=score, threshold=cut, losses=losses, weights=used, spearman=rho, warning=warning,
                       ids=ids.astype(np.int64))


def estimate_threshold(scores: np.ndarray, rule: str | float = "gmm") -> float:
    """The score at and above which a sample counts as a label issue (inf: none does); see the module docstring."""
    scores = np.asarray(scores, dtype=np.float64)
    if not isinstance(rule, str):
        return float(rule)
    low, high = float(scores.min()), float(scores.max())
    if high <= low:  # one value: nothing stands out
        return math.inf
    if rule == "midpoint":
        above = scores[scores > (low + high) / 2]
        return float(above.min()) if above.size else math.inf
    x = (scores - low) / (high - low)
    mix, means, variances = fit_two_component_gmm(x)
    log_p = _log_joint(x, mix, means, variances)
    suspect = (log_p[:, 1] > log_p[:, 0]) & (x > means[0])
    return float(scores[suspect].min()) if suspect.any() else math.inf


def fit_two_component_gmm(x: np.ndarray, *, reg: float = 1e-4, max_iter: int = 500,
                          tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixing weights, means and variances, each (2,) with the means ascending, of a 1-D two-Gaussian mixture fitted
    to x (N,) by EM. `reg` is added to each variance (as scikit-learn's reg_covar) so that a component sitting on
    many equal values (losses near 0) cannot collapse; EM starts from the quartiles."""
    x = np.asarray(x, dtype=np.float64)
    means = np.quantile(x, [0.25, 0.75])
    if means[1] <= means[0]:
        means = np.array([x.min(), x.max()])
    variances = np.full(2, x.var() / 4 + reg)
    mix = np.full(2, 0.5)
    previous = -math.inf
    for _ in range(max_iter):
        # E-step (responsibilities, in log space for samples far out in a tail), then M-step.
        log_p = _log_joint(x, mix, means, variances)
        top = log_p.max(1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(1, keepdims=True))
        resp = np.exp(log_p - log_norm)
        counts = resp.sum(0) + 10 * np.finfo(np.float64).eps
        mix = counts / x.size
        means = resp.T @ x / counts
        variances = (resp * (x[:, None] - means) ** 2).sum(0) / counts + reg
        likelihood = float(log_norm.mean())
        if abs(likelihood - previous) < tol:
            break
        previous = likelihood
    order = np.argsort(means)
    return mix[order], means[order], variances[order]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (N,) arrays (average ranks for ties); NaN when either is constant."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def rank_label_issues(model: nn.Module, weight_net: WeightNet | Sequence[WeightNet] | None, inputs: Any,
                      labels: Any = None, *, score: str = "auto", threshold: str | float = "gmm",
                      batch_size: int = 512, device: str | torch.device | None = None,
                      loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> LabelIssues:
    """Rank training samples by how much the learned weighting distrusts their given labels.

    The model scores every sample once in eval mode, without gradients (its train/eval mode is restored after);
    the weights are V(ℓ) of those losses. Nothing is trained or changed.

    Args:
        model: the trained classifier.
        weight_net: the learned V (a `MetaWeightNet`, `MetaReweighter.weights`, any function (n,) losses → (n,)
            weights); a sequence of them (snapshots of the last epochs, oldest first) for score="mean-weight"; or
            None for a model trained without one (ranked by loss).
        inputs: (N, …) tensor or a tuple of them (passed as positional arguments) with `labels`; or an iterable of
            batches (x, y, …) in a fixed order (a DataLoader without shuffling), with labels None.
        labels: (N,) the given, possibly wrong, labels (tensor or array); score, threshold: as in `rank_from_scores`.
        batch_size: samples per forward pass for tensor inputs [512].
        device: where batches go [the device of the model's first parameter].
        loss_fn: per-sample loss (logits, labels) → (n,) [cross-entropy]; use the loss V was trained on.
    Returns: a `LabelIssues` over the N samples in input order.
    """
    losses, rows = _score_samples(model, weight_net, inputs, labels, batch_size, device, loss_fn)
    return rank_from_scores(losses, rows, score=score, threshold=threshold)



def _finite_array(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {type(values).__name__}") from None
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at position "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])})")
    return array


def _log_joint(x: np.ndarray, mix: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    return np.log(mix) - 0.5 * np.log(2 * np.pi * variances) - 0.5 * (x[:, None] - means) ** 2 / variances


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def _score_samples(model: nn.Module, weight_net: WeightNet | Sequence[WeightNet] | None, inputs: Any, labels: Any,
                   batch_size: int, device: str | torch.device | None,
                   loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) eval-mode losses and (E, N) weights under each of the E weight nets (None without one)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="none"))
    nets = [] if weight_net is None else list(weight_net) if isinstance(weight_net, (list, tuple)) else [weight_net]
    if any(not callable(v) for v in nets):
        raise ValueError("weight_net must be a callable V (losses → weights), a list of them, or None")
    params = [next(v.parameters(), None) if isinstance(v, nn.Module) else None for v in nets]
    losses: list[Tensor] = []
    weights: list[list[Tensor]] = [[] for _ in nets]
    with eval_mode(model), torch.no_grad():  # every sub-module's mode comes back as the user set it
        for x, y in _batches(inputs, labels, batch_size):
            x = tuple(t.to(device) for t in x)
            batch = loss_fn(model(*x), y.to(device))
            if batch.shape != y.shape:
                raise ValueError(f"loss_fn must return one loss per sample, shape {tuple(y.shape)}, got "
                                 f"{tuple(batch.shape)}")
            losses.append(batch.double().cpu())
            for net, param, out in zip(nets, params, weights):  # V on its own device and dtype
                out.append(net(batch if param is None else batch.to(param.device, param.dtype)).double().cpu())
    if not losses:
        raise ValueError("inputs hold no samples")
    rows = np.stack([torch.cat(w).numpy() for w in weights]) if nets else None
    return torch.cat(losses).numpy(), rows


def _batches(inputs: Any, labels: Any, batch_size: int) -> Iterable[tuple[tuple[Tensor, ...], Tensor]]:
    """(x as a tuple of tensors, y) batches from tensors + labels, or from an iterable of (x, y, …) batches."""
    xs = inputs if isinstance(inputs, tuple) and all(isinstance(t, Tensor) for t in inputs) else (inputs,)
    if isinstance(xs[0], Tensor):
        if labels is None:
            raise ValueError("labels are required with tensor inputs: the given (possibly wrong) label per sample")
        y = torch.as_tensor(labels if isinstance(labels, Tensor) else np.asarray(labels)).long()
        if y.dim() != 1 or any(len(t) != len(y) for t in xs):
            raise ValueError(f"labels must have shape (N,) with N = len(inputs), got labels {tuple(y.shape)} and "
                             f"inputs of {[len(t) for t in xs]} samples")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(y), batch_size):
            yield tuple(t[start:start + batch_size] for t in xs), y[start:start + batch_size]
        return
    if labels is not None or not isinstance(inputs, Iterable):
        raise ValueError("inputs must be a tensor (or a tuple of them) with labels, or an iterable of (x, y) batches")
    for batch in inputs:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("each batch must be (x, y) or (x, y, …)")
        x = tuple(batch[0]) if isinstance(batch[0], (tuple, list)) else (batch[0],)
        yield x, torch.as_tensor(batch[1]).long()
