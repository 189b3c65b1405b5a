"""Class-balanced cross-entropy (Cui et al. 2019): each class weighted by the inverse of its effective number.

A class with n samples covers an "effective number" E_n = (1 − βⁿ)/(1 − β) of them (β = 0: one sample's worth,
β → 1: all n), and its samples get weight 1/E_n = (1 − β)/(1 − βⁿ), normalised so that the K class weights sum
to K (so a balanced training set gets weight 1 everywhere, i.e. plain CE). Counts are of the *given* labels.

Default β = 0.9999: the value of Cui et al.'s class-balanced softmax on long-tailed CIFAR-10 (their Table 2, which
MW-Net's long-tail table quotes); β = 0.9999 makes the weights close to inverse class frequency for the class sizes
of CIFAR and Fashion-MNIST.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext
from mwnet.methods.options import option
from mwnet.step import StepResult


@dataclass(frozen=True)
class ClassBalancedOptions:
    """Options of the `class-balanced` method (β is checked by `class_balanced_weights`)."""

    beta: float = option(0.9999, "β in [0, 1); 0 is plain CE, values near 1 approach inverse class frequency")


def class_balanced_weights(class_counts: Sequence[int], beta: float) -> list[float]:
    """Per-class weights (1 − β)/(1 − β^{n_c}), scaled to sum to K over the classes that have samples.

    A class without training samples (n_c = 0) has an infinite raw weight but never occurs in a batch: it gets 0.
    """
    if not (math.isfinite(beta) and 0 <= beta < 1):
        raise ValueError(f"method 'class-balanced' option 'beta' must be in [0, 1), got {beta}")
    counts = [int(c) for c in class_counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"class counts must be >= 0, got {counts}")
    if not any(counts):
        raise ValueError("class-balanced weights need at least one training sample, got all class counts 0")
    # 1 − β^n = −expm1(n log β): accurate when β^n is close to 1 (β near 1, small n); β = 0 gives 1 for n >= 1.
    raw = [0.0 if c == 0 else (1 - beta) / (1.0 if beta == 0 else -math.expm1(c * math.log(beta)))
           for c in counts]
    total = sum(raw)
    return [len(counts) * w / total for w in raw]


@register_method("class-balanced")
class ClassBalanced(Method):
    """Cross-entropy with the class-balanced weight of each sample's given label (the meta set is not used)."""

    Options = ClassBalancedOptions
    supports_ranks = True  # its step is the global step under torch.distributed

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: ClassBalancedOptions) -> None:
        super().__init__(model, optimizer, context, options)
        if len(context.class_counts) != context.num_classes:
            raise ValueError(f"class_counts has {len(context.class_counts)} entries for {context.num_classes} "
                             f"classes")
        self.class_weights = class_balanced_weights(context.class_counts, options.beta)
        self._tables: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def _weights_of(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        """(n,) the weight of each target's class, from a per-(dtype, device) table built once."""
        key = (dtype, targets.device)
        if key not in self._tables:
            self._tables[key] = torch.tensor(self.class_weights, dtype=dtype, device=targets.device)
        return self._tables[key][targets]

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        dtype = next(self.model.parameters()).dtype
        return self.supervised_step(x, y, self._weights_of(y, dtype))

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return self._weights_of(targets, losses.dtype)

    def weight_curve(self, losses: Tensor) -> None:
        return None  # the weight depends on the class, not on the loss
