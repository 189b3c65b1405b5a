"""Label noise with the paper's transition matrices: uniform, flip (one other class) and flip2 (two other classes).

A corruption is a K×K row-stochastic matrix C: a sample of true class i gets label j with probability C[i, j]
(docs/algorithm.md, "Corruption protocols"):
    uniform:r   C = r/K · 11ᵀ + (1 − r) I      (a label may be redrawn as itself: the wrong-label rate is r(K−1)/K)
    flip:r      C[i, i] = 1 − r, C[i, t(i)] = r               for one random target t(i) ≠ i per class
    flip2:r     C[i, i] = 1 − r, C[i, t₁(i)] = C[i, t₂(i)] = r/2   for two distinct random targets ≠ i
The flip targets are drawn from their own generator, so they depend on the seed only (not on the labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NOISE_KINDS = ("uniform", "flip", "flip2")


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed `KIND:RATE` corruption request."""

    kind: str
    rate: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.rate:g}"


def parse_noise(spec: str | NoiseSpec | None) -> NoiseSpec | None:
    """Parse "uniform:0.4", "flip:0.2" or "flip2:0.4" (None or "none" → None); ValueError naming a bad value."""
    if spec is None or isinstance(spec, NoiseSpec):
        return spec
    text = str(spec).strip()
    if text.lower() in ("", "none", "clean"):
        return None
    kind, sep, rate_text = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in NOISE_KINDS:
        raise ValueError(f"noise must be KIND:RATE with KIND in {', '.join(NOISE_KINDS)}, got {text!r}")
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"noise rate must be a number, got {rate_text.strip()!r} in {text!r}") from None
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ValueError(f"noise rate must be in [0, 1], got {rate_text.strip()} in {text!r}")
    return NoiseSpec(kind, rate)


def noise_transition_matrix(noise: str | NoiseSpec, num_classes: int, *, seed: int = 0) -> torch.Tensor:
    """The nominal K×K corruption matrix (float64, rows = true class, rows sum to 1) of `noise`.

    `seed` chooses the flip targets (unused by uniform noise); the same seed gives the same targets.
    """
    spec = parse_noise(noise)
    k = int(num_classes)
    if spec is None:
        return torch.eye(k, dtype=torch.float64)
    needed = {"uniform": 1, "flip": 2, "flip2": 3}[spec.kind]
    if k < needed:
        raise ValueError(f"{spec.kind} noise needs at least {needed} classes, got {k}")
    r = spec.rate
    if spec.kind == "uniform":
        return torch.full((k, k), r / k, dtype=torch.float64) + (1.0 - r) * torch.eye(k, dtype=torch.float64)
    matrix = (1.0 - r) * torch.eye(k, dtype=torch.float64)
    targets = flip_targets(k, 1 if spec.kind == "flip" else 2, seed=seed)
    share = r / targets.shape[1]
    for i in range(k):
        for t in targets[i]:
            matrix[i, t] += share
    return matrix


def flip_targets(num_classes: int, per_class: int, *, seed: int = 0) -> np.ndarray:
    """(K, per_class) int64: for each class, `per_class` distinct other classes drawn uniformly (seeded)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0F11F]))  # a stream of its own for the targets
    targets = np.empty((num_classes, per_class), dtype=np.int64)
    for i in range(num_classes):
        others = np.delete(np.arange(num_classes), i)
        targets[i] = rng.choice(others, size=per_class, replace=False)
    return targets


def sample_labels(labels: torch.Tensor, matrix: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Draw a new label for each entry of `labels` from the row `matrix[label]` (vectorised inverse-CDF draw)."""
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    cdf = np.cumsum(np.asarray(matrix, dtype=np.float64), axis=1)
    u = rng.random(len(y))
    # The first class whose cumulative probability exceeds u; the clip guards a last entry of 0.9999999….
    new = (cdf[y] <= u[:, None]).sum(axis=1)
    return torch.from_numpy(np.minimum(new, matrix.shape[1] - 1).astype(np.int64))


def corrupt_labels(labels: torch.Tensor, noise: str | NoiseSpec | None, num_classes: int, *,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels int64 (N,), nominal matrix (K, K)): each label redrawn from its row of the noise matrix.

    The matrix depends on `seed` only; the draws use a second stream of the same seed.
    """
    y = torch.as_tensor(labels, dtype=torch.int64).cpu()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    matrix = noise_transition_matrix(noise, num_classes, seed=seed)
    if parse_noise(noise) is None:
        return y.clone(), matrix
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD4A3]))
    return sample_labels(y, matrix, rng), matrix


def empirical_transition_matrix(y_true: torch.Tensor, y_given: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) float64: the fraction of class-i samples labelled j. Rows of classes without samples are NaN."""
    t = torch.as_tensor(y_true, dtype=torch.int64).cpu()
    g = torch.as_tensor(y_given, dtype=torch.int64).cpu()
    counts = torch.bincount(t * num_classes + g, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).to(torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    return counts / totals  # 0/0 = NaN marks a class with no samples
