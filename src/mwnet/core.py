"""One Meta-Weight-Net iteration for any `nn.Module` (Shu et al., NeurIPS 2019; docs/algorithm.md).

Notation: train batch (x, y) of size n, meta batch of size m, classifier parameters w with learning rates α (per
parameter group), weighting function V(·; Θ), per-sample losses ℓᵢ(w), weights vᵢ = V(ℓᵢ; Θ) and normalised
weights ṽᵢ = vᵢ / Z with Z = Σ vᵢ ("sum", the default) or Z = n ("mean").

    virtual step   ŵ(Θ) = w − α ∇w Σᵢ ṽᵢ ℓᵢ(w)
    weight net     Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ)))
    real step      w ← opt_w(∇w Σᵢ ṽᵢ(Θ_new) ℓᵢ(w))

The hypergradient factors through the weights, ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ: a hypergradient mode
(`mwnet.hypergradients`) computes the n-vector ∂L_meta/∂ṽ and the step backpropagates it through V alone.

`reweighted_step` is the one step every meta method shares: a first forward on x whose graph serves both the
virtual and the real update, a weighting rule (MW-Net's here, L2RW's in `mwnet.methods.l2rw`), and the weighted
real update. Batch norm follows the official code: every extra pass runs in train mode on throwaway copies of
the buffers (batch statistics, the model's running statistics untouched); the model's statistics change once per
step, exactly as after one train-mode forward on x, and only when the step succeeds. Each phase is marked with
`record_function` (names in `STEP_PHASES`), so a profiler shows where the time goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.func import functional_call

from mwnet.errors import NonFiniteLossError
from mwnet.hypergradients import ModeInputs, VirtualStep, capture_rng_state, check_mode, weight_sensitivity
from mwnet.hypergradients.last_layer import resolve_last_layer
from mwnet.inputs import as_inputs, check_batch
from mwnet.losses import NORMALIZATIONS, LossFn, mean_cross_entropy, normalize_weights, per_sample_cross_entropy

Normalize = Literal["sum", "mean"]
Hypergradient = Literal["forward", "double-backward", "finite-difference", "last-layer"]
VirtualLoss = Literal["detached", "attached"]
VIRTUAL_LOSSES: tuple[str, ...] = ("detached", "attached")

#: The phases of a step, in order, as marked with `torch.autograd.profiler.record_function`.
STEP_PHASES: tuple[str, ...] = ("mwnet.forward", "mwnet.weight_net_forward", "mwnet.virtual_step",
                                "mwnet.meta_gradient", "mwnet.sensitivity", "mwnet.weight_net_update",
                                "mwnet.real_update")


@dataclass
class StepResult:
    """What one step did.

    Attributes:
        loss: the weighted training loss Σ ṽᵢ ℓᵢ of the real update.
        meta_loss: L_meta(ŵ) at the virtual parameters; nan when Θ was not updated this iteration.
        weights: (n,) detached, unnormalised V(ℓ; Θ_new) used in the real update.
        losses: (n,) detached per-sample training losses.
        logits: the model's detached output on x.
        meta_updated: whether Θ was updated (False on skipped iterations of `meta_interval`).
    """

    loss: float
    meta_loss: float
    weights: Tensor
    losses: Tensor
    logits: Tensor
    meta_updated: bool


@dataclass
class FirstForward:
    """The step's first forward on x, handed to a weighting rule; `problem()` poses the virtual step on it."""

    model: nn.Module
    params: dict[str, Tensor]
    lrs: dict[str, float]
    buffers: dict[str, Tensor]
    inputs: tuple[Tensor, ...]
    targets: Tensor
    losses: Tensor
    loss_fn: LossFn
    extras: ModeInputs

    def problem(self, meta_inputs: tuple[Tensor, ...], meta_targets: Tensor, meta_loss_fn: LossFn) -> VirtualStep:
        return VirtualStep(self.model, self.params, self.lrs, self.buffers, self.inputs, self.targets, self.losses,
                           meta_inputs, meta_targets, self.loss_fn, meta_loss_fn)


@dataclass
class Weighting:
    """A weighting rule's answer: the normalised weights ṽ of the real update and what to report.

    `rollback` undoes what the rule changed (Θ and its optimizer) if the real update is then refused.
    """

    normalized: Tensor
    reported: Tensor
    meta_loss: float = math.nan
    meta_updated: bool = False
    rollback: Callable[[], None] = field(default=lambda: None)


WeightRule = Callable[[FirstForward], Weighting]


def reweighted_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple[Tensor, ...], targets: Tensor,
                    rule: WeightRule, *, loss_fn: LossFn = per_sample_cross_entropy, replay_rng: bool = True,
                    last_layer: nn.Linear | None = None) -> StepResult:
    """First forward on x, `rule` chooses the weights, then the weighted real update; all or nothing.

    Any error (bad input, a non-finite loss or weight) leaves the model, its buffers and the optimizer as they
    were. `replay_rng` keeps the RNG state of the first forward for re-forwards over x (dropout masks);
    `last_layer` captures that layer's input and output for the "last-layer" mode.
    """
    params, lrs = trainable_parameters(model, optimizer)
    snapshot = {k: b.detach().clone() for k, b in model.named_buffers()}
    rng_state = capture_rng_state(targets.device) if replay_rng else None
    with training_mode(model):
        with record_function("mwnet.forward"):
            # Train mode on scratch buffers, so nothing of the model changes until the step succeeds.
            scratch = {k: b.clone() for k, b in snapshot.items()}
            with _captured_layer(last_layer) as captured:
                logits = functional_call(model, scratch, inputs, strict=False)
            losses = loss_fn(logits, targets)
            if losses.shape != targets.shape[:1]:
                raise ValueError(f"loss_fn must return per-sample losses of shape ({targets.shape[0]},), "
                                 f"got {tuple(losses.shape)}")
            if not torch.isfinite(losses).all():
                bad = int((~torch.isfinite(losses)).sum())
                raise NonFiniteLossError("training loss", f"{bad} of {losses.shape[0]} samples")
        extras = ModeInputs(rng_state=rng_state, logits=logits)
        if last_layer is not None and captured:
            if len(captured) != 1:
                raise ValueError(f"last-layer mode: the final linear layer ran {len(captured)} times")
            if captured[0][1] is not logits:
                raise ValueError("last-layer mode: the model's output must be the final linear layer's output")
            extras = ModeInputs(rng_state=rng_state, last_layer=last_layer, features=captured[0][0], logits=logits)
        weighting = rule(FirstForward(model, params, lrs, snapshot, inputs, targets, losses, loss_fn, extras))
        with record_function("mwnet.real_update"):
            try:
                real_loss = (weighting.normalized.to(losses.dtype) * losses).sum()
                if not torch.isfinite(real_loss):
                    raise NonFiniteLossError("weighted training loss", str(float(real_loss.detach())))
                optimizer.zero_grad()
                real_loss.backward()
            except BaseException:
                weighting.rollback()
                raise
            optimizer.step()
            with torch.no_grad():  # commit the running statistics of the one train-mode forward on x
                for name, buffer in model.named_buffers():
                    buffer.copy_(scratch[name])
    return StepResult(loss=float(real_loss.detach()), meta_loss=float(weighting.meta_loss),
                      weights=weighting.reported.detach(), losses=losses.detach(), logits=logits.detach(),
                      meta_updated=weighting.meta_updated)


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
            is the same in both (docs/algorithm.md, "Differences from the authors' scripts").
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
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        check_mode(hypergradient)
        if virtual_loss not in VIRTUAL_LOSSES:
            raise ValueError(f"virtual_loss must be one of {VIRTUAL_LOSSES}, got {virtual_loss!r}")
        if virtual_loss == "attached" and hypergradient == "last-layer":
            raise ValueError("virtual_loss='attached' needs an exact or finite-difference hypergradient, "
                             "not 'last-layer'")
        if isinstance(meta_interval, bool) or not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be a positive integer, got {meta_interval!r}")
        if not (isinstance(epsilon, (int, float)) and 0 < epsilon < math.inf):
            raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")
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
        self.iteration = 0
        self.last_layer = resolve_last_layer(model, last_layer) if hypergradient == "last-layer" else None
        trainable_parameters(model, optimizer)
        _check_owned(weight_optimizer, weight_net, "weight_optimizer", "the weight net")

    def step(self, x: Tensor | Sequence[Tensor], y: Tensor, x_meta: Tensor | Sequence[Tensor] | None = None,
             y_meta: Tensor | None = None) -> StepResult:
        """One Meta-Weight-Net iteration: virtual step, weight-net update, real update (docs/algorithm.md)."""
        inputs = as_inputs(x)
        check_batch(inputs, y, "training")
        update_meta = self.iteration % self.meta_interval == 0
        meta_inputs: tuple[Tensor, ...] = ()
        if update_meta:
            if x_meta is None or y_meta is None:
                raise ValueError("a meta batch (x_meta, y_meta) is required on meta-update iterations")
            meta_inputs = as_inputs(x_meta)
            check_batch(meta_inputs, y_meta, "meta")
        _check_owned(self.weight_optimizer, self.weight_net, "weight_optimizer", "the weight net")

        def rule(first: FirstForward) -> Weighting:
            if not update_meta:
                with record_function("mwnet.weight_net_forward"), torch.no_grad():
                    weights = self._weights(first.losses.detach())
                return Weighting(normalize_weights(weights, self.normalize), weights)
            return self._meta_update(first, meta_inputs, y_meta)

        result = reweighted_step(self.model, self.optimizer, inputs, y, rule, loss_fn=self.loss_fn,
                                 replay_rng=update_meta, last_layer=self.last_layer if update_meta else None)
        self.iteration += 1
        return result

    def weights(self, losses: Tensor) -> Tensor:
        """V(ℓ; Θ) for given per-sample losses, without gradient: what the real update would use."""
        with torch.no_grad():
            return self._weights(losses.detach())

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])

    def _meta_update(self, first: FirstForward, meta_inputs: tuple[Tensor, ...], y_meta: Tensor) -> Weighting:
        """Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ))), then V(ℓ; Θ_new); Θ is restored if anything after the update fails."""
        losses = first.losses.detach()
        with record_function("mwnet.weight_net_forward"):
            weights = self._virtual_coefficients(losses)
        sensitivity, meta_loss = weight_sensitivity(first.problem(meta_inputs, y_meta, self.meta_loss_fn),
                                                    weights.detach(), self.hypergradient,
                                                    dataclasses.replace(first.extras, epsilon=self.epsilon))
        with record_function("mwnet.weight_net_update"):
            theta = [p for p in self.weight_net.parameters() if p.requires_grad]
            # ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ: a backward through V alone.
            hyper = torch.autograd.grad(weights, theta, grad_outputs=sensitivity.to(weights.dtype),
                                        allow_unused=True)
            hyper = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, hyper)]
            if not all(torch.isfinite(g).all() for g in hyper):
                raise NonFiniteLossError("hypergradient for the weight net")
            restore = _undo_point(self.weight_net, self.weight_optimizer)
            for p, g in zip(theta, hyper):
                p.grad = g
            self.weight_optimizer.step()
            with torch.no_grad():
                new_weights = self._weights(losses)
            if not torch.isfinite(new_weights).all():
                restore()
                raise NonFiniteLossError("sample weights after the weight-net update")
        return Weighting(normalize_weights(new_weights, self.normalize), new_weights, float(meta_loss), True, restore)

    def _virtual_coefficients(self, losses: Tensor) -> Tensor:
        """The coefficients of ∇ℓᵢ in the virtual step, differentiable in Θ: ṽ, or c for virtual_loss="attached"."""
        if self.virtual_loss == "detached":
            return normalize_weights(self._weights(losses), self.normalize)
        # Attached: the virtual loss is Σᵢ ṽᵢ(ℓ) ℓᵢ with ℓ = ℓ(w) inside V and inside Z, so its gradient in w is
        # Σᵢ cᵢ ∇ℓᵢ with cᵢ its partial derivative in ℓᵢ; create_graph keeps c a function of Θ.
        leaf = losses.detach().requires_grad_(True)
        with torch.enable_grad():
            total = (normalize_weights(self._weights(leaf), self.normalize) * leaf).sum()
            (coefficients,) = torch.autograd.grad(total, leaf, create_graph=True)
        return coefficients

    def _weights(self, losses: Tensor) -> Tensor:
        """V(ℓ; Θ) in the weight net's dtype and device, returned in the losses' dtype."""
        reference = next(self.weight_net.parameters())
        out = self.weight_net(losses.to(dtype=reference.dtype, device=reference.device))
        return out.to(dtype=losses.dtype, device=losses.device)


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


def _check_owned(optimizer: torch.optim.Optimizer, module: nn.Module, what: str, owner: str) -> None:
    ids = {id(p) for p in module.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                raise ValueError(f"{what} holds a parameter of shape {tuple(p.shape)} that is not in {owner}")


def _undo_point(module: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
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
def _captured_layer(layer: nn.Module | None) -> Iterator[list[tuple[Tensor, Tensor]]]:
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
