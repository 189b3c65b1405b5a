"""The interface every training method implements, so the runner can train, checkpoint and inspect any of them.

A method owns one training iteration (`step`) for the user's model and optimizer and reports what it did as a
`mwnet.StepResult`. The runner owns everything else: data order, LR schedule, evaluation, checkpoints, files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.distributed import current_shards
from mwnet.errors import NonFiniteLossError
from mwnet.step import FirstForward, StepResult, Weighting, reweighted_step


@dataclass(frozen=True)
class MethodContext:
    """Facts about the run a method may need (class counts for re-balancing, the epochs for phase changes).

    Attributes:
        num_classes: K.
        class_counts: (K,) number of training samples per *given* label.
        epochs: number of epochs the run will train.
        device: where the model lives.
    """

    num_classes: int
    class_counts: tuple[int, ...]
    epochs: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


class Method:
    """Base class of a training method (cross-entropy, Meta-Weight-Net, baselines).

    Subclasses set `name`, `uses_meta` (whether `step` needs a meta batch) and `Options` (a dataclass whose fields
    are the method's keyword options, each declared with `mwnet.methods.options.option`; the runner fills a field
    from the TrainConfig field of the same name, or from `TrainConfig.method_options`), and implement `step`.
    Everything a resumed run needs beyond the model and optimizer (which the runner saves) goes in `state_dict`.
    `supports_ranks` says that `step` under torch.distributed (several processes, each with its block of a global
    batch) is the global step, as the library's step and `supervised_step` are; the runner refuses other methods
    there.
    """

    name: ClassVar[str] = ""
    uses_meta: ClassVar[bool] = False
    supports_ranks: ClassVar[bool] = False
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

    def head_curves(self, losses: Tensor) -> dict[str, Tensor] | None:
        """Where the weight depends on the class as well (a class-aware V): the weight as a function of the loss
        for each group of classes, name → (n,); None otherwise."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # -- a helper for methods whose iteration is one (weighted) supervised update ------------------------------

    def supervised_step(self, x: Tensor, y: Tensor,
                        weights: Tensor | Callable[[Tensor], Tensor] | None = None) -> StepResult:
        """One SGD update on Σᵢ vᵢ ℓᵢ / n with per-sample cross-entropy ℓ and weights v [1].

        `weights` is fixed (n,) weights, or a function of the losses ℓ (n,) whose result is part of the loss and
        differentiated with it (the focal factor). Under torch.distributed with several ranks, the same update on
        the global batch: Σ over every rank's samples / the global n (`global_supervised_step`).
        """
        if current_shards() is not None:
            return self.global_supervised_step(x, y, weights)
        if not self.model.training:  # only then as a whole: a frozen-BN backbone the user put in eval mode stays so
            self.model.train()
        logits = self.model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        check_finite_losses(losses)
        if weights is None:
            weights = torch.ones_like(losses)
        elif callable(weights):
            weights = weights(losses)
        else:
            weights = weights.detach().to(losses.dtype)
        loss = (weights * losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepResult(loss=float(loss.detach()), meta_loss=math.nan, weights=weights.detach(),
                          losses=losses.detach(), logits=logits.detach(), meta_updated=False)


    def global_supervised_step(self, x: Tensor, y: Tensor,
                               weights: Tensor | Callable[[Tensor], Tensor] | None = None) -> StepResult:
        """`supervised_step` on the global batch, through the step every meta method shares (`mwnet.step`): it
        sums the gradients over ranks, refuses a non-finite loss on every rank alike and keeps batch norm's
        per-rank statistics with rank 0's running buffers, as for MW-Net."""

        def rule(first: FirstForward) -> Weighting:
            losses = first.losses
            if weights is None:
                chosen = torch.ones_like(losses).detach()
            elif callable(weights):
                chosen = weights(losses)
            else:
                chosen = weights.detach().to(losses.dtype)
            return Weighting(chosen / first.global_size, chosen.detach())

        return reweighted_step(self.model, self.optimizer, x, y, rule, replay_rng=False)


def check_finite_losses(losses: Tensor, what: str = "training loss") -> None:
    """NonFiniteLossError (the runner reports it as divergence) unless every per-sample loss is finite."""
    if not torch.isfinite(losses).all():
        bad = int((~torch.isfinite(losses)).sum())
        raise NonFiniteLossError(what, f"{bad} of {losses.numel()} samples")
