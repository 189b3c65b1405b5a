"""Exact, the default: every sᵢ = ⟨∇w ℓᵢ(w), u⟩ from one forward-mode (dual-number) pass.

After two ordinary backwards give u = α ⊙ ∇L_meta(ŵ) (`meta_direction`), the tangent of the per-sample losses
along u at w is the vector s, and ∂L_meta/∂ṽ = −s. No create_graph, no second-order backward.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.autograd.profiler import record_function

from mwnet.hypergradients import register_hypergradient
from mwnet.hypergradients.problem import ModeInputs, VirtualStep, meta_direction, replayed_rng


@register_hypergradient("forward", exact=True)
def forward_sensitivity(problem: VirtualStep, weights: Tensor, extras: ModeInputs) -> tuple[Tensor, Tensor]:
    direction, meta_loss = meta_direction(problem, weights)
    with record_function("mwnet.sensitivity"):
        scale = problem.loss_scale  # the tangent is linear in u: carry S·u through half precision, divide after
        if scale != 1.0:
            direction = {k: d * scale for k, d in direction.items()}
            return -directional_derivative(problem, direction, extras) / scale, meta_loss
        return -directional_derivative(problem, direction, extras), meta_loss


def directional_derivative(problem: VirtualStep, direction: dict[str, Tensor], extras: ModeInputs) -> Tensor:
    """⟨∇w ℓᵢ(w), u⟩ for all i from one dual pass over the training batch (same dropout masks); with the first
    forward's primals recorded, convolutions and linear layers compute only their tangents."""
    replay = extras.primals.replaying() if extras.primals is not None else contextlib.nullcontext()
    with fwAD.dual_level(), replayed_rng(extras.rng_state), replay, warnings.catch_warnings():
        # torch's first forward-AD call scripts its jvp decompositions and warns that torch.jit is deprecated.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        dual = {k: fwAD.make_dual(p.detach(), direction[k]) for k, p in problem.params.items()}
        # Batch norm updates its running statistics in place during this pass; they are throwaway clones.
        losses = problem.train_losses(dual)
        tangent = fwAD.unpack_dual(losses).tangent
    if tangent is None:  # the losses do not depend on the moved parameters at all
        return torch.zeros_like(losses)
    return tangent.detach()
