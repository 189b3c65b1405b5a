"""What the step reads from the user's modules and optimizers, and how it puts them back.

The trainable parameters and their learning rates, the train/eval modes of every sub-module, an undo point for
the weight net and its optimizer, and a hook that records one layer's input and output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from mwnet.errors import NonFiniteLossError


def trainable_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor],
                                                                                      dict[str, float]]:
    """The model parameters the optimizer trains (requiring grad), by name, and each one's current group lr."""
    names = {id(p): k for k, p in model.named_parameters()}
    params: dict[str, Tensor] = {}
    lrs: dict[str, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"optimizer holds a parameter of shape {tuple(p.shape)} that is not in the model")
            if p.requires_grad:
                params[names[id(p)]] = p
                lrs[names[id(p)]] = float(group["lr"])
    if not params:
        raise ValueError("the optimizer holds no parameter of the model that requires grad")
    return params, lrs


@contextlib.contextmanager
def training_mode(model: nn.Module) -> Iterator[None]:
    """Train mode for the step, then every sub-module's mode exactly as it was.

    A model in eval mode is trained as a whole for the step (a training step needs train-mode batch norm and
    dropout). A model in train mode is left as the user set it: sub-modules put in eval mode (a frozen-BN
    backbone, the usual fine-tuning recipe) keep eval-mode semantics and their running statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    if not model.training:
        model.train()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (for evaluation or scoring), then every sub-module's mode exactly as it was: `model.train(True)`
    afterwards would also switch a frozen batch-norm backbone back to train mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def check_owned(optimizer: torch.optim.Optimizer, module: nn.Module, what: str, owner: str) -> None:
    ids = {id(p) for p in module.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                raise ValueError(f"{what} holds a parameter of shape {tuple(p.shape)} that is not in {owner}")


def undo_point(module: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function that puts `module`'s parameters and `optimizer`'s state back as they are now."""
    values = [p.detach().clone() for p in module.parameters()]
    state = {p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
             for p, s in optimizer.state.items()}

    def restore() -> None:
        with torch.no_grad():
            for p, v in zip(module.parameters(), values):
                p.copy_(v)
        optimizer.state.clear()
        optimizer.state.update(state)

    return restore


@contextlib.contextmanager
def captured_layer(layer: nn.Module | None) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Record (flattened detached input, output) of `layer` for each of its calls inside the block."""
    captured: list[tuple[Tensor, Tensor]] = []
    if layer is None:
        yield captured
        return
    handle = layer.register_forward_hook(lambda _m, args, out: captured.append((args[0].detach().flatten(1), out)))
    try:
        yield captured
    finally:
        handle.remove()


def uncompiled(model: nn.Module) -> nn.Module:
    """The original module of a `torch.compile`d one: the step re-runs the model with swapped parameters and
    dual tensors, which a compiled graph would have to recompile for; compile the rest of your loop instead."""
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else model


def step_weight_net(weight_net: nn.Module, weight_optimizer: torch.optim.Optimizer,
                    hyper: list[Tensor]) -> Callable[[], None]:
    """Θ ← opt_Θ with the hypergradient `hyper` (one per trainable parameter of V), after one finite check for all
    of Θ (a single host sync); returns the function that undoes this update (the step calls it if the real update
    is then refused)."""
    if not torch.isfinite(torch.cat([g.reshape(-1) for g in hyper])).all():
        raise NonFiniteLossError("hypergradient for the weight net")
    restore = undo_point(weight_net, weight_optimizer)
    for p, g in zip([p for p in weight_net.parameters() if p.requires_grad], hyper):
        p.grad = g
    weight_optimizer.step()
    return restore
