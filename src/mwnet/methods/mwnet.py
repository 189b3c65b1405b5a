"""Meta-Weight-Net as a runner method: a thin wrapper that builds V and its optimizer around `MetaReweighter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mwnet.core import Hypergradient, MetaReweighter, Precision, VirtualLoss
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext
from mwnet.methods.options import NON_NEGATIVE, POSITIVE, POSITIVE_INT, WIDTH, option
from mwnet.step import StepResult
from mwnet.weighting import MetaWeightNet, WeightNetInit


@dataclass(frozen=True)
class MWNetOptions:
    """Options of the `mwnet` method, each declared once: `TrainConfig` inherits these fields (the runner fills the
    method's options from them), and `mwnet train` turns each into a flag with the description below as its help.

    The default normalisation is "sum" (Z = Σ v): the weighted loss is a weighted *average*, as in the scripts
    behind the paper's tables, so the classifier's step size matches plain CE at the same lr.
    """

    normalize: Literal["mean", "sum"] = option(
        "sum", "divide the weighted loss by the 'sum' of the weights (a weighted average) or by the batch size "
               "('mean')")
    hypergradient: Hypergradient = option(  # noqa: RUF009 (an immutable default; ruff cannot see through the alias)
        "forward", "how the weight net's gradient is computed: forward (exact, fastest), double-backward (exact), "
                   "finite-difference or last-layer (approximate)")
    meta_interval: int = option(1, "update the weight net every k-th iteration only", check=POSITIVE_INT)
    virtual_loss: VirtualLoss = option(  # noqa: RUF009 (an immutable default; ruff cannot see through the alias)
        "detached", "the losses the weight net sees in the virtual step: 'detached' (constants, as the paper and "
                    "the noisy-label scripts) or 'attached' (differentiated through V and the normaliser, as the "
                    "long-tail script)")
    weight_net_hidden: int = option(100, "hidden width of the weight net (the paper: 100)", check=WIDTH)
    weight_net_init: WeightNetInit = option(  # noqa: RUF009 (as above)
        "default", "the weight net's initialisation: 'default' (nn.Linear's own, as the official VNet) or "
                   "'xavier' (Xavier-normal weights, zero biases)")
    meta_optimizer: Literal["sgd", "adam"] = option("sgd", "the weight net's optimiser, sgd or adam")
    meta_lr: float = option(1e-3, "the weight net's learning rate, constant over the run (as in the official "
                                  "scripts)", check=POSITIVE)
    meta_momentum: float = option(0.9, "the weight net's SGD momentum", check=NON_NEGATIVE)
    meta_nesterov: bool = option(True, "Nesterov momentum for the weight net (SGD)")
    meta_weight_decay: float = option(5e-4, "the weight net's weight decay", check=NON_NEGATIVE)
    precision: Precision = option(  # noqa: RUF009 (as above)
        "fp32", "autocast dtype of every forward of the classifier: fp32, bf16 (CPU or CUDA) or fp16 (CUDA, with a "
                "gradient scaler); the weight net and the optimizer steps stay in float32")


def make_weight_optimizer(weight_net: torch.nn.Module, options: MWNetOptions) -> torch.optim.Optimizer:
    """The weight net's optimiser as `options` declare it: SGD (momentum, Nesterov) or Adam, with weight decay."""
    if options.meta_optimizer == "sgd" and options.meta_nesterov and options.meta_momentum <= 0:
        raise ValueError("meta_nesterov needs meta_momentum > 0")
    if options.meta_optimizer == "sgd":
        return torch.optim.SGD(weight_net.parameters(), lr=options.meta_lr, momentum=options.meta_momentum,
                               nesterov=options.meta_nesterov, weight_decay=options.meta_weight_decay)
    return torch.optim.Adam(weight_net.parameters(), lr=options.meta_lr, weight_decay=options.meta_weight_decay)


@register_method("mwnet")
class MetaWeightNetMethod(Method):
    """Meta-Weight-Net (Shu et al. 2019): per-sample weights V(ℓ; Θ) learned against the clean meta set."""

    uses_meta = True
    Options = MWNetOptions
    supports_ranks = True  # its step is the global step under torch.distributed

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: MWNetOptions) -> None:
        super().__init__(model, optimizer, context, options)
        self.weight_net = self.make_weight_net().to(context.device)
        self.weight_optimizer = make_weight_optimizer(self.weight_net, options)
        self.reweighter = MetaReweighter(model, optimizer, self.weight_net, self.weight_optimizer,
                                         normalize=options.normalize, hypergradient=options.hypergradient,
                                         meta_interval=options.meta_interval, virtual_loss=options.virtual_loss,
                                         precision=options.precision)

    def make_weight_net(self) -> torch.nn.Module:
        """V: MW-Net's loss-only MLP (`mwnet.methods.cmwnet` overrides it with a class-aware net)."""
        return MetaWeightNet(hidden=self.options.weight_net_hidden, init=self.options.weight_net_init)

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
