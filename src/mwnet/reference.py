"""The authors' Meta-Weight-Net iteration, written naively: the yardstick for tests and the speed benchmark.

It follows the official scripts' arithmetic step by step (docs/algorithm.md): a fresh deep copy of the model, a
virtual step differentiated with create_graph, a second-order backward of the meta loss into Θ, then a second
forward of the real model for the weighted update. The only departure from the scripts is the meta forward at ŵ,
which calls `torch.func.functional_call` instead of layers rewritten as `MetaModule`s (same arithmetic). Nothing
in the library calls this module; it exists so that the fast step has an independent reference.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.func import functional_call

from mwnet.losses import normalize_weights

#: Names of the phases marked inside `official_step`, in order (read by the speed benchmark's profiler).
OFFICIAL_PHASES: tuple[str, ...] = (
    "official.copy_model",
    "official.virtual_forward",
    "official.virtual_backward",
    "official.meta_forward",
    "official.second_order_backward",
    "official.weight_net_step",
    "official.second_forward",
    "official.real_update",
)


def official_step(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                  weight_optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor,
                  *, normalize: str = "mean", only: Collection[str] | None = None,
                  virtual_loss: str = "detached") -> float:
    """One official iteration on (x, y) and (x_meta, y_meta); returns the meta loss L_meta(ŵ).

    Args:
        normalize: "mean" (Z = n) or "sum" (Z = Σ v) in both the virtual and the real step.
        only: names of the parameters the virtual step moves [every parameter the optimizer trains].
        virtual_loss: "detached" (the noisy-label scripts: `vnet(cost_v.data)`) or "attached" (the long-tail
            script: `vnet(cost_v)`, so the virtual gradient also flows through V's input and the normaliser).
    """
    names = {id(p): k for k, p in model.named_parameters()}
    lrs = {names[id(p)]: float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    with record_function("official.copy_model"):
        meta_model = copy.deepcopy(model).train()
    with record_function("official.virtual_forward"):
        moved = {k: p for k, p in meta_model.named_parameters()
                 if p.requires_grad and k in lrs and (only is None or k in only)}
        losses = F.cross_entropy(meta_model(x), y, reduction="none")
        weights = normalize_weights(weight_net(losses if virtual_loss == "attached" else losses.detach()), normalize)
    with record_function("official.virtual_backward"):
        grads = torch.autograd.grad((weights * losses).sum(), list(moved.values()), create_graph=True)
        virtual = {k: p - lrs[k] * g for (k, p), g in zip(moved.items(), grads)}
    with record_function("official.meta_forward"):
        # The copy's buffers are cloned so that the meta forward leaves them as the virtual forward left them.
        meta_buffers = {k: b.clone() for k, b in meta_model.named_buffers()}
        meta_loss = F.cross_entropy(functional_call(meta_model, {**virtual, **meta_buffers}, (x_meta,),
                                                    strict=False), y_meta)
    with record_function("official.second_order_backward"):
        weight_optimizer.zero_grad()
        # As in the scripts, .backward() also fills the copy's own leaf gradients: work the algorithm does not need.
        meta_loss.backward()
    with record_function("official.weight_net_step"):
        weight_optimizer.step()
    with record_function("official.second_forward"):
        model.train()
        losses = F.cross_entropy(model(x), y, reduction="none")  # moves the real model's BN statistics once
    with record_function("official.real_update"):
        with torch.no_grad():
            weights = normalize_weights(weight_net(losses.detach()), normalize)
        optimizer.zero_grad()
        (weights * losses).sum().backward()
        optimizer.step()
    return float(meta_loss.detach())
