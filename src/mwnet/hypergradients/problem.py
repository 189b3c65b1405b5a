"""What every hypergradient mode receives: the batch's virtual-step problem and the mode-specific extras.

A mode answers one question (docs/algorithm.md, "The hypergradient through the weights"): for normalised weights
ṽ of the training batch, what is ∂L_meta(ŵ)/∂ṽᵢ, with ŵ = w − α ⊙ ∇w Σᵢ ṽᵢ ℓᵢ(w)? The helpers here are shared by
the modes: calls on throwaway buffers, dropout-mask replay, and the first-order meta direction u = α ⊙ ∇L_meta(ŵ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.func import functional_call

from mwnet.distributed import Shards
from mwnet.errors import NonFiniteLossError
from mwnet.hypergradients.tangents import PrimalCache
from mwnet.losses import LossFn
from mwnet.precision import autocast, full_precision


@dataclass(frozen=True)
class BatchProblem:
    """What a step's first forward fixes about one batch, for the weighting rule and the hypergradient modes.

    Attributes:
        model: the classifier; called through `functional_call`, never mutated.
        params: name → parameter for the parameters the virtual step moves (in the optimizer, requiring grad).
        lrs: name → the current learning rate α of that parameter's group.
        buffers: a snapshot of the model's buffers before the step; every pass runs on clones of it.
        inputs, targets: the training batch.
        losses: (n,) loss_fn(model(*inputs), targets), with its graph to `params` (the step's first forward).
        loss_fn: per-sample training loss.
        meta_inputs, meta_targets: the meta batch (empty and None when the step was given none).
        shards: under torch.distributed, the other ranks' shards of the global batches (mwnet.distributed): the
            virtual gradient and the meta gradient are summed over ranks; None in one process.
        meta_fraction: this rank's share m_r / M of the global meta batch (1 in one process).
        precision: "fp32", "bf16" or "fp16": the autocast dtype of every forward (mwnet.precision).
        loss_scale: S of a gradient scaler: every backward here differentiates S·loss and divides by S, so that
            half-precision gradients neither underflow nor go unnoticed when they overflow (1 without one).
    """

    model: nn.Module
    params: dict[str, Tensor]
    lrs: dict[str, float]
    buffers: dict[str, Tensor]
    inputs: tuple[Tensor, ...]
    targets: Tensor
    losses: Tensor
    loss_fn: LossFn
    meta_inputs: tuple[Tensor, ...] = ()
    meta_targets: Tensor | None = None
    shards: Shards | None = None
    meta_fraction: float = 1.0
    precision: str = "fp32"
    loss_scale: float = 1.0

    def forward(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        """The model's float32 (or float64) output at `params` on throwaway buffers, under the step's autocast."""
        with autocast(self.precision, inputs[0].device):
            output = call_with_buffers(self.model, params, self.buffers, inputs)
        return full_precision(output)

    def train_losses(self, params: dict[str, Tensor]) -> Tensor:
        """Per-sample training losses (n,) at `params`."""
        return self.loss_fn(self.forward(params, self.inputs), self.targets)


@dataclass(frozen=True, kw_only=True)
class VirtualStep(BatchProblem):
    """One batch's bi-level problem, as the step hands it to a hypergradient mode: the batch (with its meta batch)
    and the meta loss.

    Attributes:
        meta_loss_fn: scalar meta loss (a mean over the meta batch).
    """

    meta_loss_fn: LossFn


@dataclass(frozen=True)
class ModeInputs:
    """Inputs only some modes use.

    Attributes:
        rng_state: RNG state captured just before the first forward (`capture_rng_state`), so that re-forwards
            over x (dual and finite-difference passes) see the same dropout masks.
        last_layer: the final `nn.Linear` ("last-layer").
        features: (n, d) its input on x, detached ("last-layer").
        logits: its output on x, with the graph that produced the losses ("last-layer").
        epsilon: relative step of "finite-difference".
        primals: the first forward's convolution and linear outputs, so that the dual pass of "forward" computes
            only their tangents (mwnet.hypergradients.tangents); None runs the full dual forward.
    """

    rng_state: dict | None = None
    last_layer: nn.Linear | None = None
    features: Tensor | None = None
    logits: Tensor | None = None
    epsilon: float = 1e-4
    primals: PrimalCache | None = None


#: A mode: (problem, detached normalised weights ṽ (n,), extras) → (∂L_meta/∂ṽ (n,), L_meta(ŵ) detached).
SensitivityFn = Callable[[VirtualStep, Tensor, ModeInputs], tuple[Tensor, Tensor]]


def call_with_buffers(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                      inputs: tuple[Tensor, ...]) -> Tensor:
    """model(*inputs) with `params` swapped in and throwaway clones of `buffers` (batch norm may write them)."""
    scratch = {k: b.clone() for k, b in buffers.items()}
    return functional_call(model, {**params, **scratch}, inputs, strict=False)


def check_finite_scalar(value: Tensor, what: str) -> None:
    """Raise NonFiniteLossError unless `value` is finite (one host sync)."""
    if not torch.isfinite(value).all():
        raise NonFiniteLossError(what, str(value.detach().flatten()[:4].tolist()))


def meta_direction(problem: VirtualStep, weights: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """u = α ⊙ ∇L_meta(ŵ) and L_meta(ŵ), from two ordinary backwards (no create_graph)."""
    names = list(problem.params)
    with record_function("mwnet.virtual_step"):
        grads = scaled_grad(problem, (weights * problem.losses).sum(), [problem.params[k] for k in names],
                            retain_graph=True)
        grads = summed(problem, grads)
        virtual = {k: (problem.params[k].detach() - problem.lrs[k] * g).requires_grad_(True)
                   for k, g in zip(names, grads)}
    with record_function("mwnet.meta_gradient"):
        meta_grads, meta_loss = meta_gradient(problem, virtual, [virtual[k] for k in names])
        direction = {k: problem.lrs[k] * g for k, g in zip(names, meta_grads)}
    return direction, meta_loss


def meta_gradient(problem: VirtualStep, virtual: dict[str, Tensor], wrt: list[Tensor], *,
                  output: Tensor | None = None, retain_graph: bool = False) -> tuple[list[Tensor], Tensor]:
    """∇ L_meta with respect to `wrt` and L_meta (detached), both over the global meta batch.

    In one process: L_meta = meta_loss_fn(model at `virtual`). Under torch.distributed each rank differentiates
    its share (m_r/M)·L_r and one all-reduce sums gradients and values, so every rank gets the global mean.
    `output` is the model's output on the meta batch when the caller computed it otherwise (last-layer mode).
    """
    if output is None:
        output = problem.forward(virtual, problem.meta_inputs)
    meta_loss = problem.meta_loss_fn(output, problem.meta_targets)
    if problem.shards is None:
        check_finite_scalar(meta_loss, "meta loss")
        return scaled_grad(problem, meta_loss, wrt, retain_graph=retain_graph), meta_loss.detach()
    share = meta_loss * problem.meta_fraction
    *grads, total = problem.shards.sum([*scaled_grad(problem, share, wrt, retain_graph=retain_graph),
                                        share.detach()])
    check_finite_scalar(total, "meta loss")
    return grads, total


def scaled_grad(problem: VirtualStep, loss: Tensor, wrt: Sequence[Tensor], **kwargs: bool) -> list[Tensor]:
    """∂loss/∂wrt, computed as ∂(S·loss)/∂wrt / S with the step's loss scale S (plain autograd when S = 1)."""
    scale = problem.loss_scale
    if scale == 1.0:
        return list(torch.autograd.grad(loss, wrt, **kwargs))
    return [g / scale for g in torch.autograd.grad(loss * scale, wrt, **kwargs)]


def summed(problem: VirtualStep, tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors summed over ranks (one bucketed all-reduce), or as they are in one process."""
    return list(tensors) if problem.shards is None else problem.shards.sum(tensors)


@contextlib.contextmanager
def replayed_rng(state: dict | None) -> Iterator[None]:
    """Run a block with the RNG state of the first forward, then restore the current state (dropout masks)."""
    if state is None:
        yield
        return
    devices = [state["device"]] if state.get("device") is not None else []
    with torch.random.fork_rng(devices=devices, device_type=state.get("device_type", "cuda")):
        torch.set_rng_state(state["cpu"])
        if devices:
            torch.get_device_module(state["device_type"]).set_rng_state(state["accel"], state["device"])
        yield


def capture_rng_state(device: torch.device) -> dict:
    """The RNG state for `ModeInputs.rng_state`: take it just before the first forward."""
    state = {"cpu": torch.get_rng_state(), "device": None}
    if device.type not in ("cpu", "meta"):
        module = torch.get_device_module(device.type)
        index = device.index if device.index is not None else module.current_device()
        state.update(device=index, device_type=device.type, accel=module.get_rng_state(index))
    return state
