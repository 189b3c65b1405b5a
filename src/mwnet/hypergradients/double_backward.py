"""Exact, the textbook route: differentiate the virtual step itself.

ŵ = w − α ∇w Σ ṽᵢ ℓᵢ is built with create_graph and ṽ as a leaf; a second-order backward from L_meta(ŵ) gives
∂L_meta/∂ṽ. This is what the authors' scripts do (through Θ rather than ṽ); it costs a double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.profiler import record_function

from mwnet.hypergradients import register_hypergradient
from mwnet.hypergradients.problem import (
    ModeInputs,
    VirtualStep,
    check_finite_scalar,
    meta_gradient,
    scaled_grad,
)


@register_hypergradient("double-backward", exact=True)
def double_backward_sensitivity(problem: VirtualStep, weights: Tensor, extras: ModeInputs) -> tuple[Tensor, Tensor]:
    names = list(problem.params)
    leaf = weights.requires_grad_(True)
    with record_function("mwnet.virtual_step"):
        grads = scaled_grad(problem, (leaf * problem.losses).sum(), [problem.params[k] for k in names],
                            create_graph=True, retain_graph=True)
        if problem.shards is not None:  # the global gradient, differentiable in this rank's ṽ only
            grads = [g + (total - g.detach()) for g, total in zip(grads, problem.shards.sum(grads))]
        virtual = {k: problem.params[k] - problem.lrs[k] * g for k, g in zip(names, grads)}
    with record_function("mwnet.meta_gradient"):
        if problem.shards is None:
            meta_loss = problem.meta_loss_fn(problem.forward(virtual, problem.meta_inputs), problem.meta_targets)
            check_finite_scalar(meta_loss, "meta loss")
            (sensitivity,) = scaled_grad(problem, meta_loss, [leaf])
            return sensitivity, meta_loss.detach()
        # Several ranks: ∇L_meta(ŵ) over the global meta batch first, then the second-order backward of that
        # vector from ŵ into this rank's ṽ (ŵ depends on ṽ through this rank's part of the global gradient).
        meta_grads, meta_loss = meta_gradient(problem, virtual, [virtual[k] for k in names], retain_graph=True)
        (sensitivity,) = torch.autograd.grad([virtual[k] for k in names], leaf, grad_outputs=meta_grads)
    return sensitivity, meta_loss
