"""Learning to reweight (Ren et al. 2018): per-sample weights from one meta-gradient, with no weighting function.

Each step perturbs the training loss by per-sample ε (Σᵢ εᵢ ℓᵢ), takes a virtual SGD step ŵ(ε) = w − α ∇w Σ εᵢ ℓᵢ
and asks how the meta loss would change: w̃ᵢ = max(0, −∂L_meta(ŵ)/∂εᵢ) at ε = 0, then wᵢ = w̃ᵢ / Σ w̃ (all-zero
stays zero) and the real update is on Σᵢ wᵢ ℓᵢ. At ε = 0 the virtual step is the identity, so

    ∂L_meta/∂εᵢ = −⟨∇w ℓᵢ(w), α ⊙ ∇L_meta(w)⟩,

which is exactly what `mwnet.core.weight_sensitivity` computes for normalised weights ṽ = 0 (MW-Net's ∂L_meta/∂ṽᵢ
with the same virtual step); its "forward" mode gets all n inner products from one forward-mode pass. α is the
optimizer's current lr of each parameter's group. Batch norm behaves as in `MetaReweighter`: the meta passes run on
throwaway buffers and the model's running statistics change once per step, from the training batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mwnet.core import StepResult, capture_rng_state, weight_sensitivity
from mwnet.methods import register_method
from mwnet.methods.base import Method


@dataclass(frozen=True)
class L2RWOptions:
    """Options of the `l2rw` method (the runner fills `hypergradient` from the TrainConfig field of that name).

    Attributes:
        hypergradient: how ∂L_meta/∂ε is computed (see mwnet.core): "forward" (one forward-mode pass) and
            "double-backward" (the textbook second-order backward) are exact, "finite-difference" approximate
            ["forward"].
    """

    hypergradient: Literal["forward", "double-backward", "finite-difference"] = "forward"


def l2rw_weights(sensitivity: Tensor) -> Tensor:
    """Ren et al.'s weights from ∂L_meta/∂εᵢ (n,): clip −∂L_meta/∂ε at 0, normalise to sum 1 (all-zero stays 0)."""
    raw = (-sensitivity).clamp_min(0)
    total = raw.sum()
    return raw / torch.where(total > 0, total, torch.ones_like(total))


def trainable_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor],
                                                                                      dict[str, float]]:
    """The model parameters the optimizer trains (requiring grad), by name, and each one's current group lr."""
    names = {id(p): k for k, p in model.named_parameters()}
    params: dict[str, Tensor] = {}
    lrs: dict[str, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                if id(p) not in names:
                    raise ValueError(f"optimizer holds a parameter of shape {tuple(p.shape)} that is not in the model")
                params[names[id(p)]] = p
                lrs[names[id(p)]] = float(group["lr"])
    if not params:
        raise ValueError("the optimizer holds no parameter of the model that requires grad")
    return params, lrs


@register_method("l2rw")
class LearningToReweight(Method):
    """Ren et al. 2018: every step weights the training batch by its samples' agreement with the meta gradient.

    A step's `weights` are n·wᵢ (mean 1 unless all are 0: on the scale of CE's weight 1), `loss` is Σᵢ wᵢ ℓᵢ and
    `meta_loss` is L_meta at the parameters before the step.
    """

    uses_meta = True
    Options = L2RWOptions

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        if x_meta is None or y_meta is None:
            raise ValueError("l2rw needs a meta batch (x_meta, y_meta) on every step")
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"training batch has {x.shape[0]} inputs and {y.shape[0]} targets")
        if x_meta.shape[0] == 0 or x_meta.shape[0] != y_meta.shape[0]:
            raise ValueError(f"meta batch has {x_meta.shape[0]} inputs and {y_meta.shape[0]} targets")
        was_training = self.model.training
        self.model.train()
        try:
            return self._step(x, y, x_meta, y_meta)
        finally:
            self.model.train(was_training)

    def _step(self, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor) -> StepResult:
        model = self.model
        snapshot = {k: b.detach().clone() for k, b in model.named_buffers()}
        params, lrs = trainable_parameters(model, self.optimizer)
        rng_state = capture_rng_state(y.device)  # the forward-mode pass replays the first forward's dropout masks
        # One train-mode forward on scratch buffers serves the meta-gradient and the real update.
        scratch = {k: b.clone() for k, b in snapshot.items()}
        logits = functional_call(model, scratch, (x,), strict=False)
        losses = F.cross_entropy(logits, y, reduction="none")
        if not torch.isfinite(losses).all():
            raise ValueError(f"non-finite training loss on {int((~torch.isfinite(losses)).sum())} samples")
        epsilon = torch.zeros_like(losses)
        sensitivity, meta_loss = weight_sensitivity(
            model, params, lrs, snapshot, (x,), y, losses, epsilon, (x_meta,), y_meta,
            mode=self.options.hypergradient, rng_state=rng_state)
        weights = l2rw_weights(sensitivity.detach().to(losses.dtype))
        real_loss = (weights * losses).sum()
        self.optimizer.zero_grad()
        real_loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # commit the running statistics of the one forward on x
            for name, buffer in model.named_buffers():
                buffer.copy_(scratch[name])
        return StepResult(loss=float(real_loss.detach()), meta_loss=float(meta_loss),
                          weights=weights * weights.shape[0], losses=losses.detach(), logits=logits.detach(),
                          meta_updated=True)

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        # L2RW weights exist only inside a step (they need a meta batch and gradients); outside, all count alike.
        return torch.ones_like(losses)

    def weight_curve(self, losses: Tensor) -> None:
        return None  # the weight of a sample depends on its gradient, not on its loss alone
