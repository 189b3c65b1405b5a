"""Focal loss (Lin et al. 2017): cross-entropy scaled by (1 − pₜ)^γ, which shrinks the loss of easy samples.

With ℓ = −log pₜ the per-sample cross-entropy of the given label, the focal loss is (1 − e^{−ℓ})^γ · ℓ: a weight
that *increases* with the loss (the paper's "focal-like" shape under class imbalance). Unlike a fixed weight, the
factor is part of the loss and is differentiated too.

Default γ = 1: Meta-Weight-Net's long-tail table (Shu et al. 2019) quotes its CE, Focal and Class-balanced rows from Cui
et al. 2019 (Table 2), whose focal baseline is softmax focal loss with γ = 1.0 (Lin et al.'s detection default is
γ = 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mwnet.methods import register_method
from mwnet.methods.base import Method
from mwnet.methods.options import FINITE_NON_NEGATIVE, option
from mwnet.step import StepResult


@dataclass(frozen=True)
class FocalOptions:
    """Options of the `focal` method (γ = 1 by default: see the module docstring)."""

    gamma: float = option(1.0, "the focusing exponent γ; 0 is plain cross-entropy", check=FINITE_NON_NEGATIVE)


def focal_weights(losses: Tensor, gamma: float) -> Tensor:
    """(1 − pₜ)^γ = (1 − e^{−ℓ})^γ for per-sample cross-entropies ℓ (n,), differentiable in ℓ."""
    if gamma == 0:
        return torch.ones_like(losses)
    # 1 − e^{−ℓ} via expm1 keeps precision for confident samples (tiny ℓ). The floor keeps the gradient of x^γ
    # finite for γ < 1 at ℓ = 0 exactly (there the factor multiplies ℓ = 0, so the loss value is unchanged).
    one_minus_p = (-torch.expm1(-losses)).clamp_min(torch.finfo(losses.dtype).tiny)
    return one_minus_p.pow(gamma)


@register_method("focal")
class FocalLoss(Method):
    """Mean focal loss on the training batch (the meta set is not used).

    The step reports the cross-entropies as `losses` and the factor (1 − pₜ)^γ as `weights`, so that weights and
    weight curves read on the same axis as every other method's.
    """

    Options = FocalOptions
    supports_ranks = True  # its step is the global step under torch.distributed

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        return self.supervised_step(x, y, lambda losses: focal_weights(losses, self.options.gamma))

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return focal_weights(losses.detach(), self.options.gamma)

    def weight_curve(self, losses: Tensor) -> Tensor:
        return focal_weights(losses.detach(), self.options.gamma)
