"""The interface every training method implements, so the runner can train, checkpoint and inspect any of them.

A method owns one training iteration (`step`) for the user's model and optimizer and reports what it did as a
`mwnet.StepResult`. The runner owns everything else: data order, LR schedule, evaluation, checkpoints, files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.core import StepResult


@dataclass(frozen=True)
class MethodContext:
    """Facts about the run a method may need (class counts for re-balancing, the schedule for phase changes).

    Attributes:
        num_classes: K.
        class_counts: (K,) number of training samples per *given* label.
        train_size: number of training samples.
        meta_size: number of clean meta samples (0 when there is no meta set).
        epochs: number of epochs the run will train.
        iterations_per_epoch: training iterations in one full epoch.
        total_iterations: training iterations in the whole run.
        device: where the model lives.
    """

    num_classes: int
    class_counts: tuple[int, ...]
    train_size: int
    meta_size: int = 0
    epochs: int = 1
    iterations_per_epoch: int = 1
    total_iterations: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


class Method:
    """Base class of a training method (cross-entropy, Meta-Weight-Net, baselines).

    Subclasses set `name`, `uses_meta` (whether `step` needs a meta batch) and `Options` (a dataclass whose fields,
    with defaults, are the method's keyword options; the runner fills a field from the TrainConfig field of the
    same name, or from `TrainConfig.method_options`), and implement `step`. Everything a resumed run needs beyond
    the model and optimizer (which the runner saves) goes in `state_dict`.
    """

    name: ClassVar[str] = ""
    uses_meta: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: Any) -> None:
        self.model = model
        self.optimizer = optimizer
        self.context = context
        self.options = options

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (0-based), also after a resume; for phase changes."""

    def wants_meta(self) -> bool:
        """Whether the next `step` needs a meta batch (the runner draws one only then)."""
        return self.uses_meta

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        """One training iteration on the batch (x, y) (labels as given, possibly corrupted).

        The result describes the *training* batch, one entry per sample of x: `weights` (the weight each sample
        got, 1 for plain CE), `losses` (its cross-entropy), `logits`; the runner files them under the samples'
        indices for the weight statistics, so they must be in x's order even when a method trains on something
        else (e.g. the meta batch while fine-tuning).
        """
        raise NotImplementedError

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        """(n,) the weight the method would give samples with these per-sample losses and given labels, now."""
        return torch.ones_like(losses)

    def weight_curve(self, losses: Tensor) -> Tensor | None:
        """(n,) weight as a function of the loss alone (the paper's V(ℓ)), or None where weights depend on more."""
        return torch.ones_like(losses)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- a helper for methods whose iteration is one (weighted) supervised update ------------------------------

    def supervised_step(self, x: Tensor, y: Tensor, weights: Tensor | None = None) -> StepResult:
        """One SGD update on Σᵢ vᵢ ℓᵢ / n with per-sample cross-entropy ℓ and fixed weights v [1]."""
        self.model.train()
        logits = self.model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if not torch.isfinite(losses).all():
            raise ValueError(f"non-finite training loss on {int((~torch.isfinite(losses)).sum())} samples")
        weights = torch.ones_like(losses) if weights is None else weights.detach().to(losses.dtype)
        loss = (weights * losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepResult(loss=float(loss.detach()), meta_loss=math.nan, weights=weights, losses=losses.detach(),
                          logits=logits.detach(), meta_updated=False)
