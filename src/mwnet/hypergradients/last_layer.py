"""Approximate and cheap: the virtual step moves only the final linear layer z = W h + b.

A different, smaller bi-level problem: with δᵢ = ∂ℓᵢ/∂zᵢ, ∇W ℓᵢ = δᵢ hᵢᵀ and ∇b ℓᵢ = δᵢ, so
sᵢ = α_W δᵢᵀ G_W hᵢ + α_b δᵢᵀ g_b, where (G_W, g_b) is the meta gradient at the virtual layer. The meta batch's
features come from one no-grad forward; no pass over x is repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from mwnet.hypergradients import register_hypergradient
from mwnet.hypergradients.problem import ModeInputs, VirtualStep, meta_gradient, summed
from mwnet.precision import full_precision


@register_hypergradient("last-layer", exact=False)
def last_layer_sensitivity(problem: VirtualStep, weights: Tensor, extras: ModeInputs) -> tuple[Tensor, Tensor]:
    layer, features, logits = extras.last_layer, extras.features, extras.logits
    if layer is None or features is None or logits is None:
        raise ValueError("last-layer mode needs the final linear layer, its input features and the logits")
    if problem.losses.dim() != 1:
        raise ValueError("last-layer mode needs one loss per sample, not (n, k) loss terms")
    weight_name, bias_name = layer_parameter_names(problem.params, layer)
    lr_w = problem.lrs[weight_name]
    with record_function("mwnet.virtual_step"):
        # δ: per-sample loss gradients w.r.t. the logits; row i of ∇_z Σ ℓ is ∂ℓᵢ/∂zᵢ (losses are row-wise).
        delta = torch.autograd.grad(problem.losses.sum(), logits, retain_graph=True)[0].detach()
        weighted = weights[:, None] * delta
        grad_w, grad_b = summed(problem, [weighted.T @ features, weighted.sum(0)])
        w_virtual = (layer.weight.detach() - lr_w * grad_w).requires_grad_(True)
        b_virtual = None
        if bias_name is not None:
            b_virtual = (layer.bias.detach() - problem.lrs[bias_name] * grad_b).requires_grad_(True)
    with record_function("mwnet.meta_gradient"):
        meta_features = layer_input(problem, layer)
        meta_logits = meta_features @ w_virtual.T
        if b_virtual is not None:
            meta_logits = meta_logits + b_virtual
        grads, meta_loss = meta_gradient(problem, {}, [w_virtual] if b_virtual is None else [w_virtual, b_virtual],
                                         output=meta_logits)
    with record_function("mwnet.sensitivity"):
        s = lr_w * ((delta @ grads[0]) * features).sum(1)
        if b_virtual is not None:
            s = s + problem.lrs[bias_name] * (delta @ grads[1])
    return -s, meta_loss


def layer_parameter_names(params: dict[str, Tensor], layer: nn.Linear) -> tuple[str, str | None]:
    """The names under which the optimizer trains the layer's weight and bias (ValueError if it does not)."""
    by_id = {id(p): k for k, p in params.items()}
    if id(layer.weight) not in by_id:
        raise ValueError("last-layer mode: the final linear layer's weight is not trained by the optimizer")
    bias_name = None
    if layer.bias is not None:
        if id(layer.bias) not in by_id:
            raise ValueError("last-layer mode: the final linear layer's bias is not trained by the optimizer")
        bias_name = by_id[id(layer.bias)]
    return by_id[id(layer.weight)], bias_name


@torch.no_grad()
def layer_input(problem: VirtualStep, layer: nn.Module) -> Tensor:
    """The input of `layer` during a train-mode, no-grad forward of the meta batch (throwaway buffers), flattened
    and in float32."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        problem.forward({}, problem.meta_inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"last-layer mode: the final linear layer ran {len(captured)} times in one forward")
    return full_precision(captured[0].flatten(1))


def resolve_last_layer(model: nn.Module, last_layer: nn.Module | str | None) -> nn.Linear:
    """The final nn.Linear: given, named, `model.classifier`, or the last nn.Linear among the model's modules."""
    if isinstance(last_layer, str):
        layer = dict(model.named_modules()).get(last_layer)
        if layer is None:
            raise ValueError(f"last_layer {last_layer!r} is not a sub-module of the model")
    elif last_layer is not None:
        layer = last_layer
    elif isinstance(getattr(model, "classifier", None), nn.Linear):
        layer = model.classifier
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("last-layer mode needs an nn.Linear final layer; the model has none")
        layer = linears[-1]
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"last_layer must be an nn.Linear, got {type(layer).__name__}")
    return layer
