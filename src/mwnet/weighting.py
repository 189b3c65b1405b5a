"""The weighting function V(ℓ; Θ): a small MLP from a sample's loss to its weight in (0, 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

# How the linear layers start: "default" is nn.Linear's own (the official VNet), "xavier" Xavier-normal, zero bias.
WeightNetInit = Literal["default", "xavier"]
INITS: tuple[str, ...] = get_args(WeightNetInit)


class MetaWeightNet(nn.Module):
    """Meta-Weight-Net: Linear(1, h) → ReLU → … → Linear(h, 1) → sigmoid.

    Args:
        hidden: width of the hidden layer [100], or a tuple of widths for a deeper net (the paper's ablation uses
            (100, 100), (10, 10), …).
        init: "default" keeps nn.Linear's own initialisation, as both official repositories do: weights and
            biases uniform in ±1/√fan_in (±1 for the first layer, ±0.1 for a 100-wide second layer); V then
            starts near 0.5 for small losses and drifts, up or down by chance, as the loss grows. "xavier" gives
            Xavier-normal weights and zero biases (V(0) = 0.5 exactly), the start this package used before
            ["default"].

    The input is a batch of per-sample losses, shape (n,) or (n, 1); the output is their weights, shape (n,).
    The losses are the *input*, not part of the classifier's graph: callers pass them detached
    (docs/algorithm.md, "The weighting function").
    """

    def __init__(self, hidden: int | Sequence[int] = 100, *, init: WeightNetInit = "default") -> None:
        super().__init__()
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden) if isinstance(hidden, Sequence) else ()
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"hidden must be a positive int or a non-empty tuple of positive ints, got {hidden!r}")
        _check_init(init)
        self.init = init
        self.hidden = widths
        layers: list[nn.Module] = []
        fan_in = 1
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, 1))
        self.layers = nn.Sequential(*layers)
        if init == "xavier":
            _xavier([m for m in self.layers if isinstance(m, nn.Linear)])

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(_loss_column(losses))).squeeze(1)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, init={self.init!r}"


def class_heads(counts: Sequence[int], num_heads: int = 3) -> tuple[int, ...]:
    """The head of each class: k-means with k = `num_heads` over the per-class training counts, solved exactly.

    CMW-Net (Shu et al., TPAMI 2023) routes a sample to one of k task heads by the cluster of its class's size
    (the authors run scikit-learn's KMeans(3) on the label counts). The counts are one-dimensional, so the optimal
    clustering is a partition of the sorted counts into contiguous groups, found here by dynamic programming in
    exact rational arithmetic: deterministic, no seed, no local optimum. Equal counts always share a head. With
    fewer distinct counts than `num_heads`, each distinct count is a head of its own.

    Args:
        counts: (K,) training samples per (observed) class.
        num_heads: k [3].
    Returns:
        (K,) head index of each class; head 0 holds the largest classes, the last head the smallest.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
    values = [int(c) for c in counts]
    if not values or any(v < 0 or v != float(c) for v, c in zip(values, counts)):
        raise ValueError(f"counts must be a non-empty sequence of non-negative integers, got {list(counts)!r}")
    distinct = sorted(set(values), reverse=True)
    size = [values.count(v) for v in distinct]
    groups = min(num_heads, len(distinct))
    bounds = _optimal_partition(distinct, size, groups)
    head_of_value = {distinct[i]: g for g, (a, b) in enumerate(bounds) for i in range(a, b)}
    return tuple(head_of_value[v] for v in values)


def _optimal_partition(values: list[int], size: list[int], groups: int) -> list[tuple[int, int]]:
    """Contiguous groups [a, b) of `values` (each value weighted by `size`) minimising the within-group sum of
    squares, exactly (Fractions); ties go to the first optimum met, so the answer is deterministic."""
    from fractions import Fraction

    n = len(values)
    w, s, q = [0], [0], [0]  # prefix sums of weights, weighted values, weighted squares
    for v, m in zip(values, size):
        w.append(w[-1] + m)
        s.append(s[-1] + m * v)
        q.append(q[-1] + m * v * v)

    def cost(a: int, b: int) -> Fraction:
        return Fraction(q[b] - q[a]) - Fraction((s[b] - s[a]) ** 2, w[b] - w[a])

    # best[g][b]: the least cost of the first b values in g groups; cut[g][b] where the last group starts.
    best = [[Fraction(0)] + [cost(0, b) for b in range(1, n + 1)]]
    cut = [[0] * (n + 1)]
    for g in range(1, groups):
        row, where = [Fraction(0)] * (n + 1), [0] * (n + 1)
        for b in range(g + 1, n + 1):
            options = [(best[g - 1][a] + cost(a, b), a) for a in range(g, b)]
            row[b], where[b] = min(options, key=lambda t: t[0])
        best.append(row)
        cut.append(where)
    bounds, b = [], n
    for g in range(groups - 1, -1, -1):
        a = cut[g][b] if g else 0
        bounds.append((a, b))
        b = a
    return bounds[::-1]


class ClassAwareWeightNet(nn.Module):
    """CMW-Net's weighting function V(ℓ, y): a shared trunk Linear(1, h) → ReLU and one head Linear(h, 1) → sigmoid
    per cluster of classes; a sample's weight comes from the head of its (observed) class.

    Args:
        heads: (K,) head index of each class, e.g. `class_heads(counts)` [None: one head for every class, V(ℓ)].
        hidden: width of the trunk [100, as the authors' ACVNet(1, 100, 100, 1, 3)].
        init: "default" (nn.Linear's own, as the authors' code) or "xavier", as `MetaWeightNet` ["default"].

    The layers are created trunk first, then head 0, 1, …: with one head and the same seed, the parameters and the
    outputs are those of `MetaWeightNet(hidden)`. `uses_targets = True`: `MetaReweighter` calls it as
    V(ℓ, y) with the observed labels (`forward(losses, targets)`).
    """

    uses_targets = True

    def __init__(self, heads: Sequence[int] | None = None, hidden: int = 100, *,
                 init: WeightNetInit = "default") -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        _check_init(init)
        head_of_class = None
        if heads is not None:
            head_of_class = torch.as_tensor(list(heads), dtype=torch.long)
            used = sorted(set(head_of_class.tolist()))
            if head_of_class.dim() != 1 or not used or used != list(range(len(used))):
                raise ValueError(f"heads must number the heads 0, 1, … without gaps, one per class, got {list(heads)}")
        self.num_heads = 1 if head_of_class is None else int(head_of_class.max()) + 1
        self.hidden, self.init = hidden, init
        self.trunk = nn.Linear(1, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(self.num_heads))
        # (K,) head of each class; empty with one head (no class input needed).
        self.register_buffer("head_of_class", torch.zeros(0, dtype=torch.long) if head_of_class is None
                             else head_of_class)
        if init == "xavier":
            _xavier([self.trunk, *self.heads])

    def head_weights(self, losses: Tensor) -> Tensor:
        """(n, H): the weight every head would give each loss (the learned curves, one per head)."""
        features = torch.relu(self.trunk(_loss_column(losses)))
        return torch.sigmoid(torch.cat([head(features) for head in self.heads], dim=1))

    def forward(self, losses: Tensor, targets: Tensor | None = None) -> Tensor:
        """(n,) weights: each sample's loss through the head of its class `targets` (ignored with one head)."""
        all_heads = self.head_weights(losses)
        if self.num_heads == 1:
            return all_heads[:, 0]
        if targets is None:
            raise ValueError("a class-aware weight net with several heads needs the samples' labels (targets)")
        if targets.shape != all_heads.shape[:1] or targets.is_floating_point():
            raise ValueError(f"targets must be ({all_heads.shape[0]},) integer labels, got {targets.dtype} "
                             f"{tuple(targets.shape)}")
        if int(targets.min()) < 0 or int(targets.max()) >= len(self.head_of_class):
            raise ValueError(f"targets must lie in [0, {len(self.head_of_class)}) (the classes the heads were "
                             f"built for)")
        chosen = self.head_of_class.to(targets.device)[targets]
        return all_heads.gather(1, chosen.unsqueeze(1)).squeeze(1)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, heads={self.num_heads}, init={self.init!r}"


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _xavier(layers: Sequence[nn.Linear]) -> None:
    """Xavier-normal weights, zero biases: the "xavier" start of both weight nets."""
    for layer in layers:
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)


def _loss_column(losses: Tensor) -> Tensor:
    """Losses of shape (n,) or (n, 1) as the (n, 1) input of a weight net's first layer."""
    if losses.dim() == 1:
        return losses.unsqueeze(1)
    if losses.dim() != 2 or losses.shape[1] != 1:
        raise ValueError(f"losses must have shape (n,) or (n, 1), got {tuple(losses.shape)}")
    return losses


def apply_weight_net(weight_net: nn.Module, losses: Tensor, targets: Tensor | None = None) -> Tensor:
    """V(ℓ; Θ) in the weight net's dtype and device, returned in the losses' dtype and device.

    A weight net with `uses_targets = True` (`ClassAwareWeightNet`) is called as V(ℓ, y) with the observed labels;
    every other one as V(ℓ), so plain MW-Net is untouched.
    """
    reference = next(weight_net.parameters())
    moved = losses.to(dtype=reference.dtype, device=reference.device)
    if getattr(weight_net, "uses_targets", False):
        if targets is None:
            raise ValueError("this weight net needs the samples' labels: pass targets")
        out = weight_net(moved, targets.to(reference.device))
    else:
        out = weight_net(moved)
    return out.to(dtype=losses.dtype, device=losses.device)
