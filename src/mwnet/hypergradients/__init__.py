"""Hypergradient modes: each computes ∂L_meta(ŵ)/∂ṽ for a batch, registered by name.

| mode | exact | how |
|---|---|---|
| "forward" (default) | yes | ordinary backwards for ŵ and ∇L_meta(ŵ), then one forward-mode (dual) pass |
| "double-backward" | yes | create_graph through the virtual step and a second-order backward |
| "finite-difference" | no | central differences of the per-sample losses along u = α ⊙ ∇L_meta(ŵ) |
| "last-layer" | no | the virtual step moves the final linear layer only; closed form |

A new mode is one function `fn(problem, weights, extras) -> (sensitivity, meta_loss)` decorated with
`@register_hypergradient(name, exact=...)`; the tests loop over `HYPERGRADIENTS`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from mwnet.hypergradients.problem import ModeInputs, SensitivityFn, VirtualStep, capture_rng_state

HYPERGRADIENTS: dict[str, SensitivityFn] = {}
EXACT_HYPERGRADIENTS: list[str] = []


def register_hypergradient(name: str, *, exact: bool) -> Callable[[SensitivityFn], SensitivityFn]:
    """Register `fn` as hypergradient mode `name` (exact: equals the double-backward result up to rounding)."""

    def register(fn: SensitivityFn) -> SensitivityFn:
        if name in HYPERGRADIENTS:
            raise ValueError(f"hypergradient mode {name!r} is already registered")
        HYPERGRADIENTS[name] = fn
        if exact:
            EXACT_HYPERGRADIENTS.append(name)
        return fn

    return register


def check_mode(mode: str) -> None:
    """ValueError naming the known modes unless `mode` is one of them."""
    if mode not in HYPERGRADIENTS:
        raise ValueError(f"hypergradient must be one of {tuple(HYPERGRADIENTS)}, got {mode!r}")


def weight_sensitivity(problem: VirtualStep, weights: Tensor, mode: str = "forward",
                       extras: ModeInputs | None = None) -> tuple[Tensor, Tensor]:
    """∂L_meta(ŵ)/∂ṽᵢ for every training sample (n,), and L_meta(ŵ) (detached), by mode `mode`.

    `weights` are the normalised weights ṽ (n,), detached. Raises NonFiniteLossError on a non-finite meta loss.
    """
    check_mode(mode)
    return HYPERGRADIENTS[mode](problem, weights.detach(), extras or ModeInputs())


# Registration order is the order of the table above (and of `mwnet bench speed`'s rows).
from mwnet.hypergradients import forward, double_backward, finite_difference, last_layer  # noqa: E402, F401, I001

__all__ = ["EXACT_HYPERGRADIENTS", "HYPERGRADIENTS", "ModeInputs", "VirtualStep", "capture_rng_state",
           "check_mode", "register_hypergradient", "weight_sensitivity"]
