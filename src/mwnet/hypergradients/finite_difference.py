"""Approximate: sᵢ ≈ (ℓᵢ(w + εu) − ℓᵢ(w − εu)) / 2ε from two no-grad forwards (DARTS-style).

The step ε is scaled so that ‖εu‖ = epsilon · max(‖w‖, 1); the two passes run in full precision whatever the
step's autocast (a difference of two half-precision losses divided by ε would be noise). Cheaper than the dual
pass on some hardware, but its error grows with the curvature of the losses along u.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.autograd.profiler import record_function

from mwnet.hypergradients import register_hypergradient
from mwnet.hypergradients.problem import ModeInputs, VirtualStep, meta_direction, replayed_rng


@register_hypergradient("finite-difference", exact=False)
def finite_difference_sensitivity(problem: VirtualStep, weights: Tensor, extras: ModeInputs) -> tuple[Tensor, Tensor]:
    direction, meta_loss = meta_direction(problem, weights)
    with record_function("mwnet.sensitivity"), torch.no_grad():
        return -central_difference(problem, direction, extras), meta_loss


def central_difference(problem: VirtualStep, direction: dict[str, Tensor], extras: ModeInputs) -> Tensor:
    primals = {k: p.detach() for k, p in problem.params.items()}
    norm_u = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
    if norm_u == 0.0:
        return torch.zeros(problem.losses.shape, dtype=problem.losses.dtype, device=problem.losses.device)
    norm_w = math.sqrt(sum(float(p.pow(2).sum()) for p in primals.values()))
    eps = extras.epsilon * max(norm_w, 1.0) / norm_u
    full_precision_problem = dataclasses.replace(problem, precision="fp32")
    ends = []
    for sign in (1.0, -1.0):
        shifted = {k: p + sign * eps * direction[k] for k, p in primals.items()}
        with replayed_rng(extras.rng_state):
            # Without autocast: a difference of two half-precision losses, divided by a small ε, is noise.
            ends.append(full_precision_problem.train_losses(shifted))
    return (ends[0] - ends[1]) / (2 * eps)
