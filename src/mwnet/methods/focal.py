"""Focal loss (Lin et al. 2017): cross-entropy scaled by (1 − pₜ)^γ, which shrinks the loss of easy samples.

With ℓ = −log pₜ the per-sample cross-entropy of the given label, the focal loss is (1 − e^{−ℓ})^γ · ℓ: a weight
that *increases* with the loss (the paper's "focal-like" shape under class imbalance). Unlike a fixed weight, the
factor is part of the loss and is differentiated too.

Default γ = 1: Meta-Weight-Net's long-tail table (PAPER.md) quotes its CE, Focal and Class-balanced rows from Cui
et al. 2019 (Table 2), whose focal baseline is softmax focal loss with γ = 1.0 (Lin et al.'s detection default is
γ = 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mwnet.core import StepResult
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext


@dataclass(frozen=True)
class FocalOptions:
    """Options of the `focal` method.

    Attributes:
        gamma: the focusing exponent γ >= 0; γ = 0 is plain cross-entropy [1.0, see the module docstring].
    """

    gamma: float = 1.0


def focal_weights(losses: Tensor, gamma: float) -> Tensor:
    """(1 − pₜ)^γ = (1 − e^{−ℓ})^γ for per-sample cross-entropies ℓ (n,), differentiable in ℓ."""
    if gamma == 0:
        return torch.ones_like(losses)
    # 1 − e^{−ℓ} via expm1 keeps precision for confident samples (tiny ℓ). The floor keeps the gradient of x^γ
    # finite for γ < 1 at ℓ = 0 exactly (there the factor multiplies ℓ = 0, so the loss value is unchanged).
    one_minus_p = (-torch.expm1(-losses)).clamp_min(torch.finfo(losses.dtype).tiny)
    return one_minus_p.pow(gamma)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Per-sample focal loss −(1 − pₜ)^γ log pₜ, shape (n,), from logits (n, K) and labels (n,)."""
    losses = F.cross_entropy(logits, targets, reduction="none")
    return focal_weights(losses, gamma) * losses


@register_method("focal")
class FocalLoss(Method):
    """Mean focal loss on the training batch (the meta set is not used).

    The step reports the cross-entropies as `losses` and the factor (1 − pₜ)^γ as `weights`, so that weights and
    weight curves read on the same axis as every other method's.
    """

    Options = FocalOptions

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: FocalOptions) -> None:
        super().__init__(model, optimizer, context, options)
        if not (math.isfinite(options.gamma) and options.gamma >= 0):
            raise ValueError(f"method 'focal' option 'gamma' must be a finite number >= 0, got {options.gamma}")

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        self.model.train()
        logits = self.model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if not torch.isfinite(losses).all():
            raise ValueError(f"non-finite training loss on {int((~torch.isfinite(losses)).sum())} samples")
        weights = focal_weights(losses, self.options.gamma)
        loss = (weights * losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepResult(loss=float(loss.detach()), meta_loss=math.nan, weights=weights.detach(),
                          losses=losses.detach(), logits=logits.detach(), meta_updated=False)

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return focal_weights(losses.detach(), self.options.gamma)

    def weight_curve(self, losses: Tensor) -> Tensor:
        return focal_weights(losses.detach(), self.options.gamma)
