"""Tangent-only convolutions and linear layers for the dual pass of the "forward" mode.

The dual pass differentiates the per-sample losses along u at the same w, on the same batch, with the same
buffers and dropout masks as the step's first forward, so every layer's primal output is one the first forward
already computed. For a convolution or linear layer z = W ⋆ x + b, forward-mode AD would run three products
(W ⋆ x, W ⋆ ẋ, Ẇ ⋆ x); here the first is taken from the first forward and only the tangent
ż = W ⋆ ẋ + Ẇ ⋆ x + ḃ is computed. Every other layer runs its ordinary dual forward. A layer whose recorded
output was since modified in place, or that is called more often than it was recorded, runs its ordinary forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

TANGENT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


class PrimalCache:
    """The first forward's outputs of every convolution and linear layer, in call order."""

    def __init__(self) -> None:
        self.outputs: dict[nn.Module, list[tuple[Tensor, int]]] = {}

    @contextlib.contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        """Record the outputs of `model`'s tangent layers during the block (the step's first forward)."""
        handles = []
        for module in model.modules():
            if _supported(module):
                self.outputs[module] = []
                handles.append(module.register_forward_hook(self._record))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, module: nn.Module, _args: tuple, output: Tensor) -> None:
        if isinstance(output, Tensor):
            self.outputs[module].append((output.detach(), output._version))

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """During the block (the dual pass), recorded layers compute only their tangent."""
        patched = []
        for module, outputs in self.outputs.items():
            if outputs:
                module.forward = _TangentOnly(module, outputs)
                patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's forward


class _TangentOnly:
    """A layer's forward for one dual pass: the recorded primal output, dual with the freshly computed tangent."""

    def __init__(self, module: nn.Module, outputs: list[tuple[Tensor, int]]) -> None:
        self.module = module
        self.outputs = outputs
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        call, self.calls = self.calls, self.calls + 1
        module = self.module
        if call >= len(self.outputs) or self.outputs[call][0]._version != self.outputs[call][1]:
            return type(module).forward(module, x)
        primal = self.outputs[call][0]
        x_p, x_t = fwAD.unpack_dual(x)
        w_p, w_t = fwAD.unpack_dual(module.weight)
        b_t = fwAD.unpack_dual(module.bias).tangent if module.bias is not None else None
        if x_p.shape[0] != primal.shape[0]:
            return type(module).forward(module, x)
        tangent = None
        for inputs, weight in ((x_t, w_p), (x_p, w_t)):
            if inputs is not None and weight is not None:
                part = _product(module, inputs, weight)
                tangent = part if tangent is None else tangent + part
        if b_t is not None:
            shape = (1, -1) + (1,) * (primal.dim() - 2) if isinstance(module, nn.Conv2d) else (-1,)
            tangent = b_t.view(shape).expand_as(primal) if tangent is None else tangent + b_t.view(shape)
        if tangent is None:
            return primal
        # No copy of the primal is needed: the dual pass runs the first forward's code, so an in-place op on this
        # output (an inplace ReLU) ran in the first forward too, changed the recorded tensor's version, and sent
        # this call to the ordinary forward above.
        return fwAD.make_dual(primal, tangent.to(primal.dtype))


def _product(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and type(module).forward is nn.Conv2d.forward
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
