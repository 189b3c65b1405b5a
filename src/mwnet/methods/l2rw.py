"""Learning to reweight (Ren et al. 2018): per-sample weights from one meta-gradient, with no weighting function.

Each step perturbs the training loss by per-sample ε (Σᵢ εᵢ ℓᵢ), takes a virtual SGD step ŵ(ε) = w − α ∇w Σ εᵢ ℓᵢ
and asks how the meta loss would change: w̃ᵢ = max(0, −∂L_meta(ŵ)/∂εᵢ) at ε = 0, then wᵢ = w̃ᵢ / Σ w̃ (all-zero
stays zero) and the real update is on Σᵢ wᵢ ℓᵢ. ∂L_meta/∂εᵢ at ε = 0 is exactly MW-Net's ∂L_meta/∂ṽᵢ at ṽ = 0
(docs/algorithm.md), so L2RW is the core's step (`reweighted_step`) with another weighting rule: the same first
forward, hypergradient modes, batch-norm semantics and all-or-nothing update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mwnet.distributed import global_sum
from mwnet.hypergradients import weight_sensitivity
from mwnet.losses import mean_cross_entropy
from mwnet.methods import register_method
from mwnet.methods.base import Method
from mwnet.step import FirstForward, StepResult, Weighting, reweighted_step


@dataclass(frozen=True)
class L2RWOptions:
    """Options of the `l2rw` method (the runner fills `hypergradient` from the TrainConfig field of that name).

    Attributes:
        hypergradient: how ∂L_meta/∂ε is computed (`mwnet.hypergradients`): "forward" (one forward-mode pass)
            and "double-backward" (the textbook second-order backward) are exact, "finite-difference"
            approximate ["forward"].
    """

    hypergradient: Literal["forward", "double-backward", "finite-difference"] = "forward"


def l2rw_weights(sensitivity: Tensor) -> Tensor:
    """Ren et al.'s weights from ∂L_meta/∂εᵢ (n,): clip −∂L_meta/∂ε at 0, normalise to sum 1 (all-zero stays 0)."""
    raw = (-sensitivity).clamp_min(0)
    total = raw.sum()
    return raw / torch.where(total > 0, total, torch.ones_like(total))


@register_method("l2rw")
class LearningToReweight(Method):
    """Ren et al. 2018: every step weights the training batch by its samples' agreement with the meta gradient.

    A step's `weights` are n·wᵢ (mean 1 unless all are 0: on the scale of CE's weight 1), `loss` is Σᵢ wᵢ ℓᵢ and
    `meta_loss` is L_meta at the parameters before the step.
    """

    uses_meta = True
    Options = L2RWOptions
    supports_ranks = True  # its step is the global step under torch.distributed

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        if x_meta is None or y_meta is None:
            raise ValueError("l2rw needs a meta batch (x_meta, y_meta) on every step")

        def rule(first: FirstForward) -> Weighting:
            zero = torch.zeros_like(first.losses).detach()
            sensitivity, meta_loss = weight_sensitivity(first.problem(mean_cross_entropy), zero,
                                                        self.options.hypergradient, first.extras)
            raw = (-sensitivity.detach().to(first.losses.dtype)).clamp_min(0)
            total = global_sum(raw.sum(), first.shards)
            weights = raw / torch.where(total > 0, total, torch.ones_like(total))
            return Weighting(weights, weights * first.global_size, meta_loss, meta_updated=True)

        return reweighted_step(self.model, self.optimizer, x, y, rule, meta=(x_meta, y_meta))

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        # L2RW weights exist only inside a step (they need a meta batch and gradients); outside, all count alike.
        return torch.ones_like(losses)

    def weight_curve(self, losses: Tensor) -> None:
        return None  # the weight of a sample depends on its gradient, not on its loss alone
