"""The paper's Fine-tuning baseline: plain CE on the training set, then fine-tuning on the clean meta set.

The run is split by epoch: the first E − k epochs are plain cross-entropy on the training batches; the last k
epochs train on meta batches instead (one SGD step on the mean CE of a meta batch per iteration, so the schedule
and the number of iterations stay those of every other method). The paper gives no details beyond "fine-tune the
CE model on the meta data", so the defaults are ours:

* k = 10 % of the epochs (at least 1, and at least one CE epoch is kept): with the paper's schedules (and ours on
  Fashion-MNIST) that is the tail of the run, after the last lr decay, when CE has converged;
* the fine-tuning lr is the scheduled lr (factor 1): by then it has decayed to lr/100 in every preset, a
  fine-tuning-sized step. `fine_tune_lr_factor` scales it during the fine-tuning steps only (the optimizer's lr is
  restored after each step, so the scheduler and the logged lr are not disturbed).

During fine-tuning the training batch is still forwarded (without gradient, on throwaway batch-norm buffers) so the
runner gets its losses and predictions; its samples are reported with weight 0, as they no longer train the model.
Batch-norm running statistics then come from the meta batches, as in any fine-tuning on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from mwnet.errors import NonFiniteLossError
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext
from mwnet.methods.options import FINITE_POSITIVE, option
from mwnet.step import StepResult


@dataclass(frozen=True)
class FineTuneOptions:
    """Options of the `fine-tune` method."""

    fine_tune_epochs: int | None = option(
        None, "how many final epochs train on the meta set [10 % of the epochs, at least 1; 0 for one epoch]")
    fine_tune_lr_factor: float = option(1.0, "the fine-tuning steps use the scheduled lr times this factor",
                                        check=FINITE_POSITIVE)


def default_fine_tune_epochs(epochs: int) -> int:
    """10 % of the run (rounded, at least 1), leaving at least one epoch of CE."""
    return min(max(1, round(epochs / 10)), epochs - 1) if epochs > 1 else 0


@register_method("fine-tune")
class FineTune(Method):
    """Cross-entropy on the training set, then (for the last `fine_tune_epochs` epochs) on the meta set.

    In the fine-tuning epochs a step's `loss` is the mean CE of the meta batch it trained on; `losses`, `logits`
    and the zero `weights` are those of the training batch.
    """

    uses_meta = True
    Options = FineTuneOptions

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: FineTuneOptions) -> None:
        super().__init__(model, optimizer, context, options)
        k = options.fine_tune_epochs
        if k is None:
            k = default_fine_tune_epochs(context.epochs)
        elif not 0 <= k < context.epochs:
            raise ValueError(f"method 'fine-tune' option 'fine_tune_epochs' must be in [0, {context.epochs - 1}] "
                             f"(a run of {context.epochs} epochs keeps at least one CE epoch), got {k}")
        self.fine_tune_epochs = k
        self.first_fine_tune_epoch = context.epochs - k
        self.epoch = 0

    @property
    def fine_tuning(self) -> bool:
        """Whether the current epoch is in the fine-tuning phase."""
        return self.fine_tune_epochs > 0 and self.epoch >= self.first_fine_tune_epoch

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def wants_meta(self) -> bool:
        return self.fine_tuning

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        if not self.fine_tuning:
            return self.supervised_step(x, y)
        if x_meta is None or y_meta is None:
            raise ValueError(f"fine-tune needs a meta batch in its fine-tuning epochs (epoch {self.epoch + 1})")
        model = self.model
        if not model.training:  # only then as a whole: a frozen-BN backbone the user put in eval mode stays so
            model.train()
        # The training batch only for the report: train mode like every other method's forward, but on clones of
        # the buffers so that its batch statistics do not enter the running statistics.
        with torch.no_grad():
            scratch = {k: b.clone() for k, b in model.named_buffers()}
            logits = functional_call(model, scratch, (x,), strict=False)
            losses = F.cross_entropy(logits, y, reduction="none")
        meta_loss = F.cross_entropy(model(x_meta), y_meta)
        if not torch.isfinite(meta_loss):
            raise NonFiniteLossError("fine-tuning loss on the meta batch", str(float(meta_loss)))
        self.optimizer.zero_grad()
        meta_loss.backward()
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        try:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.options.fine_tune_lr_factor
            self.optimizer.step()
        finally:
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
        return StepResult(loss=float(meta_loss.detach()), meta_loss=math.nan, weights=torch.zeros_like(losses),
                          losses=losses, logits=logits, meta_updated=False)

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return torch.zeros_like(losses) if self.fine_tuning else torch.ones_like(losses)

    def weight_curve(self, losses: Tensor) -> Tensor:
        return torch.zeros_like(losses) if self.fine_tuning else torch.ones_like(losses)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
