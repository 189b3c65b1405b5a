"""Meta-Weight-Net as a runner method: a thin wrapper that builds V and its optimizer around `MetaReweighter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mwnet.core import MetaReweighter, StepResult
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext
from mwnet.weighting import MetaWeightNet


@dataclass(frozen=True)
class MWNetOptions:
    """Options of the `mwnet` method (the runner fills them from TrainConfig fields of the same names).

    Attributes:
        normalize: "sum" (Z = Σ v: the weighted loss is a weighted *average*, as in the scripts behind the
            paper's tables, so the classifier's step size matches plain CE at the same lr) or "mean" (Z = n).
        hypergradient: how ∇Θ is computed (see mwnet.core): "forward" and "double-backward" are exact.
        meta_interval: update V every k-th iteration only.
        weight_net_hidden: hidden width of V (the paper: 100).
        meta_optimizer: "sgd" (momentum, Nesterov, weight decay below) or "adam" (weight decay below).
        meta_lr: V's learning rate, constant over the run (as in the official scripts).
    """

    normalize: Literal["mean", "sum"] = "sum"
    hypergradient: Literal["forward", "double-backward", "finite-difference", "last-layer"] = "forward"
    meta_interval: int = 1
    weight_net_hidden: int = 100
    meta_optimizer: Literal["sgd", "adam"] = "sgd"
    meta_lr: float = 1e-3
    meta_momentum: float = 0.9
    meta_nesterov: bool = True
    meta_weight_decay: float = 5e-4


@register_method("mwnet")
class MetaWeightNetMethod(Method):
    """Meta-Weight-Net (Shu et al. 2019): per-sample weights V(ℓ; Θ) learned against the clean meta set."""

    uses_meta = True
    Options = MWNetOptions

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: MWNetOptions) -> None:
        super().__init__(model, optimizer, context, options)
        if options.meta_lr <= 0:
            raise ValueError(f"meta_lr must be positive, got {options.meta_lr}")
        if options.meta_weight_decay < 0:
            raise ValueError(f"meta_weight_decay must be >= 0, got {options.meta_weight_decay}")
        if options.meta_optimizer == "sgd" and options.meta_nesterov and options.meta_momentum <= 0:
            raise ValueError("meta_nesterov needs meta_momentum > 0")
        self.weight_net = MetaWeightNet(hidden=options.weight_net_hidden).to(context.device)
        if options.meta_optimizer == "sgd":
            self.weight_optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.weight_net.parameters(), lr=options.meta_lr, momentum=options.meta_momentum,
                nesterov=options.meta_nesterov, weight_decay=options.meta_weight_decay)
        else:
            self.weight_optimizer = torch.optim.Adam(self.weight_net.parameters(), lr=options.meta_lr,
                                                     weight_decay=options.meta_weight_decay)
        self.reweighter = MetaReweighter(model, optimizer, self.weight_net, self.weight_optimizer,
                                         normalize=options.normalize, hypergradient=options.hypergradient,
                                         meta_interval=options.meta_interval)

    def wants_meta(self) -> bool:
        return self.reweighter.iteration % self.options.meta_interval == 0

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        return self.reweighter.step(x, y, x_meta, y_meta)

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return self.reweighter.weights(losses)

    def weight_curve(self, losses: Tensor) -> Tensor:
        return self.reweighter.weights(losses)

    def state_dict(self) -> dict:
        return {"weight_net": self.weight_net.state_dict(), "weight_optimizer": self.weight_optimizer.state_dict(),
                "reweighter": self.reweighter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weight_net.load_state_dict(state["weight_net"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.reweighter.load_state_dict(state["reweighter"])
