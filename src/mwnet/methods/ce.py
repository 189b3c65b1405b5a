"""Plain cross-entropy: the baseline every sample-weighting method is measured against."""

from __future__ import annotations

from torch import Tensor

from mwnet.methods import register_method
from mwnet.methods.base import Method
from mwnet.step import StepResult


@register_method("ce")
class CrossEntropy(Method):
    """Mean cross-entropy on the training batch; every sample has weight 1 (the meta set is not used)."""

    supports_ranks = True  # its step is the global step under torch.distributed

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        return self.supervised_step(x, y)
