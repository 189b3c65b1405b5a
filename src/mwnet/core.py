"""One Meta-Weight-Net iteration for any `nn.Module` (Shu et al., NeurIPS 2019; docs/algorithm.md).

Notation: train batch (x, y) of size n, meta batch of size m, classifier parameters w with learning rates α (per
parameter group), weighting function V(·; Θ), per-sample losses ℓᵢ(w), weights vᵢ = V(ℓᵢ; Θ) and normalised
weights ṽᵢ = vᵢ / Z with Z = Σ vᵢ ("sum", the default) or Z = n ("mean").

    virtual step   ŵ(Θ) = w − α ∇w Σᵢ ṽᵢ ℓᵢ(w)
    weight net     Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ)))
    real step      w ← opt_w(∇w Σᵢ ṽᵢ(Θ_new) ℓᵢ(w))

The hypergradient factors through the weights, ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ: a hypergradient mode
(`mwnet.hypergradients`) computes the n-vector ∂L_meta/∂ṽ and the step backpropagates it through V alone.

`MetaReweighter` is MW-Net's weighting rule on the one step every meta method shares (`mwnet.step`): V gives the
weights, a hypergradient mode gives ∂L_meta/∂ṽ, Θ takes its step, and the real update uses V(ℓ; Θ_new).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from mwnet.distributed import (
    Traffic,
    current_shards,
    unwrap,
    weight_net_gradient,
)
from mwnet.hypergradients import check_mode, weight_sensitivity
from mwnet.hypergradients.last_layer import resolve_last_layer
from mwnet.inputs import first_line
from mwnet.losses import NORMALIZATIONS, LossFn, mean_cross_entropy, normalize_weights, per_sample_cross_entropy
from mwnet.module_state import check_owned, step_weight_net, trainable_parameters, uncompiled
from mwnet.precision import check_precision
from mwnet.step import FirstForward, StepOptions, StepResult, Weighting, reweighted_step
from mwnet.weighting import apply_weight_net


class ForwardModeFallbackWarning(UserWarning):
    """The "forward" hypergradient met an op without a forward-mode rule and switched to "double-backward"."""


Normalize = Literal["sum", "mean"]
Hypergradient = Literal["forward", "double-backward", "finite-difference", "last-layer"]
VirtualLoss = Literal["detached", "attached"]
Precision = Literal["fp32", "bf16", "fp16"]
VIRTUAL_LOSSES: tuple[str, ...] = ("detached", "attached")

class MetaReweighter:
    """Meta-Weight-Net for the user's own model, optimizer and loop.

    Args:
        model: any `nn.Module` (called through `torch.func.functional_call`; layers are never rewritten).
        optimizer: the classifier's `torch.optim` optimizer (momentum, weight decay, schedulers all honoured).
        weight_net: the weighting function V, e.g. `MetaWeightNet()`.
        weight_optimizer: the optimizer of V's parameters.
        loss_fn: logits, targets → per-sample losses (n,) [cross-entropy].
        meta_loss_fn: logits, targets → scalar meta loss [mean cross-entropy].
        normalize: "sum" (Z = Σ v: a weighted average, as the scripts behind the paper's tables) or "mean"
            (Z = n) ["sum"].
        hypergradient: how ∇Θ is computed, a name in `mwnet.hypergradients.HYPERGRADIENTS`; "forward" and
            "double-backward" are exact, "finite-difference" and "last-layer" approximate ["forward"].
        meta_interval: update Θ every k-th step only; other steps do just the weighted real update [1].
        last_layer: the final `nn.Linear` (or its name) for hypergradient="last-layer" [model.classifier, or
            the last nn.Linear in the model].
        epsilon: relative step of the finite-difference mode [1e-4].
        virtual_loss: "detached": V sees each loss as a constant input in the virtual step, as the paper and
            the noisy-label scripts ["detached"]. "attached": as the authors' long-tail script, V's input stays
            attached to w there, so the virtual step moves w along Σᵢ cᵢ ∇ℓᵢ with cᵢ = ∂(Σⱼ ṽⱼℓⱼ)/∂ℓᵢ =
            [vᵢ + V′(ℓᵢ)(ℓᵢ − L̄)] / Σv for "sum" (L̄ = Σ ṽⱼℓⱼ), (vᵢ + V′(ℓᵢ)ℓᵢ) / n for "mean". The real update
            is the same in both (docs/algorithm.md, "The loss V sees in the virtual step").
        group: the torch.distributed process group whose ranks hold shards of one global batch [the default
            group, when initialised with more than one rank]. The model may be passed plain or wrapped in
            DistributedDataParallel; every rank ends each step with the same parameters (docs/distributed.md).
        precision: "fp32", or "bf16" / "fp16" autocast for every forward of the classifier; the weight net, the
            hypergradient and the optimizer steps stay in float32; "fp16" needs CUDA (mwnet.precision) ["fp32"].
        max_grad_norm: clip the real update's gradient to this global norm [None].
        grad_accumulation: step the classifier's optimizer every k-th call, on the sum of the k real-update
            gradients (each call still updates Θ on its own batch); the optimizer sees Σ over the k micro-batches
            of their normalised weighted losses, so divide the lr by k for an average [1].
        scaler: a `torch.amp.GradScaler` for the real update and the virtual and meta gradients; an overflow
            returns a result with `skipped=True` and changes nothing but the scale [one of its own for "fp16"].
        tangent_only: in the "forward" mode's dual pass, convolutions and linear layers reuse the first
            forward's outputs and compute only their tangents, batch norms use fused kernels (same result, less
            work) [True].

    A hypergradient mode that fails with NotImplementedError (an op without a forward-mode rule: a custom
    autograd.Function without jvp, some fused kernels) makes "forward" fall back once, with a warning, to the
    equally exact "double-backward". A `torch.compile`d model is stepped through its original module.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        weight_net: nn.Module,
        weight_optimizer: torch.optim.Optimizer,
        *,
        loss_fn: LossFn | None = None,
        meta_loss_fn: LossFn | None = None,
        normalize: Normalize = "sum",
        hypergradient: Hypergradient = "forward",
        meta_interval: int = 1,
        last_layer: nn.Module | str | None = None,
        epsilon: float = 1e-4,
        virtual_loss: VirtualLoss = "detached",
        group: dist.ProcessGroup | None = None,
        precision: Precision = "fp32",
        max_grad_norm: float | None = None,
        grad_accumulation: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        tangent_only: bool = True,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        check_mode(hypergradient)
        check_precision(precision)
        if virtual_loss not in VIRTUAL_LOSSES:
            raise ValueError(f"virtual_loss must be one of {VIRTUAL_LOSSES}, got {virtual_loss!r}")
        if virtual_loss == "attached" and hypergradient == "last-layer":
            raise ValueError("virtual_loss='attached' needs an exact or finite-difference hypergradient, "
                             "not 'last-layer'")
        if isinstance(meta_interval, bool) or not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be a positive integer, got {meta_interval!r}")
        if not (isinstance(epsilon, (int, float)) and 0 < epsilon < math.inf):
            raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and 0 < max_grad_norm < math.inf):
            raise ValueError(f"max_grad_norm must be positive and finite, got {max_grad_norm!r}")
        if isinstance(grad_accumulation, bool) or not isinstance(grad_accumulation, int) or grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be a positive integer, got {grad_accumulation!r}")
        model = uncompiled(model)
        self.model = model
        self.optimizer = optimizer
        self.weight_net = weight_net
        self.weight_optimizer = weight_optimizer
        self.loss_fn = loss_fn or per_sample_cross_entropy
        self.meta_loss_fn = meta_loss_fn or mean_cross_entropy
        self.normalize = normalize
        self.hypergradient = hypergradient
        self.meta_interval = meta_interval
        self.epsilon = float(epsilon)
        self.virtual_loss = virtual_loss
        self.group = group
        self.precision = precision
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.grad_accumulation = grad_accumulation
        self.scaler = scaler
        self.tangent_only = bool(tangent_only)
        self.traffic = Traffic()  # collectives and bytes this rank sent (under torch.distributed)
        self.iteration = 0
        self.last_layer = resolve_last_layer(unwrap(model), last_layer) if hypergradient == "last-layer" else None
        trainable_parameters(unwrap(model), optimizer)
        check_owned(weight_optimizer, weight_net, "weight_optimizer", "the weight net")

    def step(self, x: Tensor | Sequence[Tensor], y: Tensor, x_meta: Tensor | Sequence[Tensor] | None = None,
             y_meta: Tensor | None = None) -> StepResult:
        """One Meta-Weight-Net iteration: virtual step, weight-net update, real update (docs/algorithm.md)."""
        update_meta = self.iteration % self.meta_interval == 0

        def check() -> None:
            if update_meta and (x_meta is None or y_meta is None):
                raise ValueError("a meta batch (x_meta, y_meta) is required on meta-update iterations")
            if self.virtual_loss == "attached" and current_shards(self.group) is not None:
                raise ValueError("virtual_loss='attached' is not supported under torch.distributed")
            check_owned(self.weight_optimizer, self.weight_net, "weight_optimizer", "the weight net")

        def rule(first: FirstForward) -> Weighting:
            if not update_meta:
                with record_function("mwnet.weight_net_forward"), torch.no_grad():
                    weights = self._weights(first.losses.detach(), first.targets)
                return Weighting(self._normalized(weights, first), weights)
            return self._meta_update(first)

        meta = (x_meta, y_meta) if update_meta and x_meta is not None and y_meta is not None else None
        if self.precision == "fp16" and self.scaler is None and y.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        options = StepOptions(loss_fn=self.loss_fn, precision=self.precision, max_grad_norm=self.max_grad_norm,
                              scaler=self.scaler, group=self.group, traffic=self.traffic)
        cycle = self.iteration % self.grad_accumulation
        result = reweighted_step(self.model, self.optimizer, x, y, rule, meta=meta, options=options,
                                 replay_rng=update_meta, last_layer=self.last_layer if update_meta else None,
                                 check=check, zero_grad=cycle == 0, apply=cycle == self.grad_accumulation - 1,
                                 record_primals=update_meta and self.tangent_only and self.hypergradient == "forward")
        if not result.skipped:
            self.iteration += 1
        return result

    def weights(self, losses: Tensor, targets: Tensor | None = None) -> Tensor:
        """V(ℓ; Θ) for given per-sample losses (and their labels, for a weight net that uses them), without
        gradient: what the real update would use."""
        with torch.no_grad():
            return self._weights(losses.detach(), targets)

    def state_dict(self) -> dict:
        """Everything the method holds: the iteration, the weight net, its optimizer (and the scaler's state)."""
        state = {"iteration": self.iteration, "weight_net": self.weight_net.state_dict(),
                 "weight_optimizer": self.weight_optimizer.state_dict(), "hypergradient": self.hypergradient}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a state holding only the iteration (older checkpoints) restores just that."""
        self.iteration = int(state["iteration"])
        if "weight_net" in state:
            self.weight_net.load_state_dict(state["weight_net"])
            self.weight_optimizer.load_state_dict(state["weight_optimizer"])
            self.hypergradient = state.get("hypergradient", self.hypergradient)
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def _meta_update(self, first: FirstForward) -> Weighting:
        """Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ))), then V(ℓ; Θ_new); Θ is restored if anything after the update fails."""
        losses = first.losses.detach()
        with record_function("mwnet.weight_net_forward"):
            if first.shards is None:
                weights = self._virtual_coefficients(losses, first.targets)
            else:  # ṽ = v / Z with the global Z, whose own dependence on Θ is added below
                outputs = self._weights(losses, first.targets)
                normalizer = first.normalizer(outputs, self.normalize)
                weights = outputs / normalizer
        sensitivity, meta_loss = self._sensitivity(first, weights.detach())
        with record_function("mwnet.weight_net_update"):
            theta = [p for p in self.weight_net.parameters() if p.requires_grad]
            if first.shards is None:
                # ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ: a backward through V alone.
                hyper = torch.autograd.grad(weights, theta, grad_outputs=sensitivity.to(weights.dtype),
                                            allow_unused=True)
                hyper = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, hyper)]
            else:  # the same sum over every rank's samples, through the shared Z
                hyper = weight_net_gradient(outputs, theta, sensitivity.to(outputs.dtype), normalizer,
                                            self.normalize, first.shards)
            restore = step_weight_net(self.weight_net, self.weight_optimizer, hyper)
            with torch.no_grad():
                new_weights = self._weights(losses, first.targets)
        # A non-finite new weight shows in the real update's loss, checked (once) before the optimizer steps; the
        # step then calls `restore`.
        return Weighting(self._normalized(new_weights, first), new_weights, meta_loss, True, restore)

    def _sensitivity(self, first: FirstForward, weights: Tensor) -> tuple[Tensor, Tensor]:
        """∂L_meta/∂ṽ by the chosen mode; "forward" falls back once to "double-backward" where an op has no
        forward-mode rule (nothing has changed at that point, so the retry is the same step)."""
        extras = dataclasses.replace(first.extras, epsilon=self.epsilon)
        try:
            return weight_sensitivity(first.problem(self.meta_loss_fn), weights, self.hypergradient, extras)
        except NotImplementedError as exc:
            if self.hypergradient != "forward":
                raise
            warnings.warn(ForwardModeFallbackWarning(
                f"forward-mode AD is not available for this model ({first_line(exc)}); using the equally exact "
                "'double-backward' hypergradient from now on"), stacklevel=4)
            self.hypergradient = "double-backward"
            return weight_sensitivity(first.problem(self.meta_loss_fn), weights, self.hypergradient, extras)

    def _normalized(self, weights: Tensor, first: FirstForward) -> Tensor:
        """ṽ for the real update: v / Z, with Z over every rank's samples."""
        if first.shards is None:
            return normalize_weights(weights, self.normalize)
        return weights / first.normalizer(weights, self.normalize)

    def _virtual_coefficients(self, losses: Tensor, targets: Tensor) -> Tensor:
        """The coefficients of ∇ℓᵢ in the virtual step, differentiable in Θ: ṽ, or c for virtual_loss="attached"."""
        if self.virtual_loss == "detached":
            return normalize_weights(self._weights(losses, targets), self.normalize)
        # Attached: the virtual loss is Σᵢ ṽᵢ(ℓ) ℓᵢ with ℓ = ℓ(w) inside V and inside Z, so its gradient in w is
        # Σᵢ cᵢ ∇ℓᵢ with cᵢ its partial derivative in ℓᵢ; create_graph keeps c a function of Θ.
        leaf = losses.detach().requires_grad_(True)
        with torch.enable_grad():
            total = (normalize_weights(self._weights(leaf, targets), self.normalize) * leaf).sum()
            (coefficients,) = torch.autograd.grad(total, leaf, create_graph=True)
        return coefficients

    def _weights(self, losses: Tensor, targets: Tensor | None) -> Tensor:
        """V(ℓ; Θ) in the weight net's dtype and device, returned in the losses' dtype.

        A weight net with `uses_targets = True` (class-aware, e.g. `ClassAwareWeightNet`) is called as
        V(ℓ, y) with the observed labels; every other one as V(ℓ), so plain MW-Net is untouched.
        """
        return apply_weight_net(self.weight_net, losses, targets)


