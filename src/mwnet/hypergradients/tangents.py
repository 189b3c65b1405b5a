"""Tangent-only convolutions, linear layers and batch norms for the dual pass of the "forward" mode.

The dual pass differentiates the per-sample losses along u at the same w, on the same batch, with the same
buffers and dropout masks as the step's first forward, so every layer's primal output is one the first forward
already computed. For a convolution or linear layer z = W ⋆ x + b, forward-mode AD would run three products
(W ⋆ x, W ⋆ ẋ, Ẇ ⋆ x); here the first is taken from the first forward and only the tangent
ż = W ⋆ ẋ + Ẇ ⋆ x + ḃ is computed. A layer whose recorded output was since modified in place, or that is called
more often than it was recorded, runs its ordinary forward. A batch norm on batch statistics computes its primal
and tangent with three fused kernels (`_BatchNormDual`) instead of forward-mode AD's decomposition of about
fifteen elementwise passes; its output is not recorded (nothing else keeps it alive, so recording it would cost
an activation's memory per layer). Every other layer runs its ordinary dual forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class PrimalCache:
    """The first forward's outputs of every convolution and linear layer, in call order, and the batch norms."""

    def __init__(self) -> None:
        self.outputs: dict[nn.Module, list[tuple[Tensor, int]]] = {}
        self.norms: list[_BatchNorm] = []

    @contextlib.contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        """Record the outputs of `model`'s tangent layers during the block (the step's first forward)."""
        handles = []
        for module in model.modules():
            if _plain_batch_norm(module):
                self.norms.append(module)
            elif _supported(module):
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
        for norm in self.norms:
            norm.forward = _BatchNormDual(norm)
            patched.append(norm)
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
        if x_p.shape[0] != primal.shape[0]:
            return type(module).forward(module, x)
        tangent = _affine_tangent(module, x_p, x_t, primal)
        if tangent is None:
            return primal
        # No copy of the primal is needed: the dual pass runs the first forward's code, so an in-place op on this
        # output (an inplace ReLU) ran in the first forward too, changed the recorded tensor's version, and sent
        # this call to the ordinary forward above.
        return fwAD.make_dual(primal, tangent.to(primal.dtype))


def _affine_tangent(module: nn.Module, x_p: Tensor, x_t: Tensor | None, primal: Tensor) -> Tensor | None:
    """ż = W ⋆ ẋ + Ẇ ⋆ x + ḃ of a convolution or linear layer (None when every tangent is zero)."""
    w_p, w_t = fwAD.unpack_dual(module.weight)
    b_t = fwAD.unpack_dual(module.bias).tangent if module.bias is not None else None
    tangent = None
    for inputs, weight in ((x_t, w_p), (x_p, w_t)):
        if inputs is not None and weight is not None:
            part = _product(module, inputs, weight)
            tangent = part if tangent is None else tangent.add_(part)  # in place: both are fresh products
    if b_t is not None:
        shape = (1, -1) + (1,) * (primal.dim() - 2) if isinstance(module, nn.Conv2d) else (-1,)
        tangent = b_t.view(shape).expand_as(primal) if tangent is None else tangent + b_t.view(shape)
    return tangent


class _BatchNormDual:
    """A batch norm's forward for one dual pass: `batch_norm_dual` on batch statistics; on running statistics
    (an eval-mode layer) the ordinary dual forward, which is linear and cheap."""

    def __init__(self, module: _BatchNorm) -> None:
        self.module = module

    def __call__(self, x: Tensor) -> Tensor:
        module = self.module
        if not _uses_batch_statistics(module):
            return type(module).forward(module, x)
        x_p, x_t = fwAD.unpack_dual(x)
        output, tangent = batch_norm_dual(module, x_p, x_t)
        return output if tangent is None else fwAD.make_dual(output, tangent.to(output.dtype))


def batch_norm_dual(module: _BatchNorm, x: Tensor, x_tangent: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Primal and tangent of a batch norm on batch statistics, at dual affine parameters (None: zero tangent).

    y = γ x̂ + β with x̂ = (x − μ)/σ per channel, and ẏ = γ̇ x̂ + β̇ + γ ẋ̂, ẋ̂ = (ẋ − mean ẋ − x̂ · mean(x̂ ẋ))/σ.
    The primal kernel also returns μ and 1/σ; γ̇ x̂ + β̇ is one multiply-add, x · γ̇/σ + (β̇ − μ γ̇/σ); and γ ẋ̂ is
    ∂x̂/∂x applied to ẋ, scaled by γ. That Jacobian, (I − 11ᵀ/m − x̂x̂ᵀ/m)/σ over a channel's m values, is
    symmetric, so batch norm's backward kernel, given ẋ where it expects the output gradient, computes γ ẋ̂.
    """
    weight, weight_t = fwAD.unpack_dual(module.weight) if module.weight is not None else (None, None)
    bias, bias_t = fwAD.unpack_dual(module.bias) if module.bias is not None else (None, None)
    output, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, module.eps)
    tangent = None
    if weight_t is not None or bias_t is not None:
        scale = invstd * weight_t if weight_t is not None else torch.zeros_like(invstd)
        shift = -mean * scale if bias_t is None else bias_t - mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        tangent = torch.addcmul(shift.view(shape), x, scale.view(shape))
    if x_tangent is not None:
        part = torch.ops.aten.native_batch_norm_backward(x_tangent, x, weight, None, None, mean, invstd, True,
                                                         module.eps, [True, False, False])[0]
        tangent = part if tangent is None else tangent.add_(part)
    return output, tangent


def _uses_batch_statistics(module: _BatchNorm) -> bool:
    """Whether the layer normalises by the batch's statistics (as `_BatchNorm.forward` decides)."""
    return module.training or module.running_mean is None or module.running_var is None


def _product(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def _plain_batch_norm(module: nn.Module) -> bool:
    """A batch norm whose forward is `_BatchNorm`'s (not SyncBatchNorm, nor a subclass with a forward of its own)."""
    return isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and type(module).forward is nn.Conv2d.forward
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
