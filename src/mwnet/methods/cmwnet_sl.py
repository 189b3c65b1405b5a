"""CMW-Net-SL (Shu et al., TPAMI 2023) as a runner method: class-aware weights that mix each label with an EMA
teacher's soft label (`mwnet.label_correction`), after a few epochs of plain cross-entropy.

The meta set is the clean one the run is given (the authors' script builds a pseudo-meta set from low-loss
training samples instead; see docs/algorithm.md, "CMW-Net and CMW-Net-SL").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mwnet.label_correction import LabelCorrectingReweighter
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext
from mwnet.methods.cmwnet import ClassAwareCurves, CMWNetOptions
from mwnet.methods.mwnet import make_weight_optimizer
from mwnet.methods.options import FINITE_POSITIVE, NON_NEGATIVE, Check, option
from mwnet.step import StepResult
from mwnet.weighting import ClassAwareWeightNet, class_heads

_UNIT = Check(lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass(frozen=True)
class CMWNetSLOptions(CMWNetOptions):
    """Options of the `cmwnet-sl` method: CMW-Net's (its `normalize` has no effect: a sample's two coefficients sum
    to 1, so Z = n either way) and the label correction's. `TrainConfig` inherits them."""

    teacher_decay: float = option(0.997, "cmwnet-sl: decay of the EMA teacher whose predictions are the soft "
                                         "labels (the authors: 0.997)", check=_UNIT)
    ce_warmup_epochs: int = option(2, "cmwnet-sl: epochs of plain cross-entropy before the label-correcting meta "
                                      "step (the authors: 10 of 300 on CIFAR-10)", check=NON_NEGATIVE)
    mixup: bool = option(False, "cmwnet-sl: mix training batches (Beta(alpha, alpha)) and meta batches "
                                "(Beta(1, 1)), as the authors' script")
    mixup_alpha: float = option(1.0, "cmwnet-sl: alpha of the training batches' mixup (the authors: 1)",
                                check=FINITE_POSITIVE)


@register_method("cmwnet-sl")
class LabelCorrectingCMWNet(ClassAwareCurves, Method):
    """CMW-Net-SL: Lᵢ = vᵢ CE(xᵢ, yᵢ) + (1 − vᵢ) CE(xᵢ, p̃ᵢ), vᵢ = V(ℓᵢ, yᵢ; Θ) learned on the meta set."""

    uses_meta = True
    Options = CMWNetSLOptions

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: CMWNetSLOptions) -> None:
        super().__init__(model, optimizer, context, options)
        if options.virtual_loss != "detached":
            raise ValueError("cmwnet-sl takes V's input as a constant: virtual_loss must be 'detached'")
        heads = class_heads(context.class_counts, options.weight_net_heads)
        self.weight_net = ClassAwareWeightNet(heads, hidden=options.weight_net_hidden,
                                              init=options.weight_net_init).to(context.device)
        self.weight_optimizer = make_weight_optimizer(self.weight_net, options)
        self.reweighter = LabelCorrectingReweighter(
            model, optimizer, self.weight_net, self.weight_optimizer, hypergradient=options.hypergradient,
            meta_interval=options.meta_interval, teacher_decay=options.teacher_decay,
            mixup_alpha=options.mixup_alpha if options.mixup else None)
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def warming_up(self) -> bool:
        return self.epoch < self.options.ce_warmup_epochs

    def wants_meta(self) -> bool:
        return not self.warming_up() and self.reweighter.iteration % self.options.meta_interval == 0

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        if self.warming_up():
            return self.reweighter.warmup_step(x, y)
        return self.reweighter.step(x, y, x_meta, y_meta)


    def state_dict(self) -> dict:
        return {"reweighter": self.reweighter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.reweighter.load_state_dict(state["reweighter"])
