"""One Meta-Weight-Net iteration for any `nn.Module` (Shu et al., NeurIPS 2019; ../shared/PAPER.md).

Notation (PAPER.md): train batch (x, y) of size n, meta batch of size m, classifier parameters w with learning
rates α (per parameter group), weighting function V(·; Θ), per-sample losses ℓᵢ(w), weights vᵢ = V(ℓᵢ; Θ) and
normalised weights ṽᵢ = vᵢ / Z with Z = n ("mean") or Z = Σ vᵢ ("sum").

    virtual step   ŵ(Θ) = w − α ∇w Σᵢ ṽᵢ ℓᵢ(w)
    weight net     Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ)))
    real step      w ← opt_w(∇w Σᵢ ṽᵢ(Θ_new) ℓᵢ(w))

The hypergradient factors through the weights: ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ, and

    ∂L_meta/∂ṽᵢ = −⟨∇w ℓᵢ(w), α ⊙ ∇L_meta(ŵ)⟩ = −sᵢ,

so every exact mode computes the n-vector ∂L_meta/∂ṽ (`weight_sensitivity`) and then backpropagates it
through V alone. The modes differ in how they get it:

* "forward" (default): one ordinary backward for ŵ, one for ∇L_meta(ŵ), and all sᵢ at once as the tangent of
  the per-sample losses along u = α ⊙ ∇L_meta(ŵ), from a single forward-mode (dual-number) pass. No
  create_graph, no second-order backward.
* "double-backward": the textbook route: create_graph through the virtual step and a second-order backward.
* "finite-difference": sᵢ ≈ (ℓᵢ(w + εu) − ℓᵢ(w − εu)) / 2ε from two no-grad forwards (approximate).
* "last-layer": the virtual step moves only the final linear layer; the meta features are computed once and
  sᵢ is closed form (approximate: a different, cheaper bi-level problem).

Batch norm follows the official code: the virtual/meta/dual passes run in train mode on throwaway copies of the
buffers, so they use batch statistics and leave the model's running statistics alone; the real model's
statistics change once per step, exactly as after one train-mode forward on x.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Normalize = Literal["mean", "sum"]
Hypergradient = Literal["forward", "double-backward", "finite-difference", "last-layer"]
LossFn = Callable[[Tensor, Tensor], Tensor]

NORMALIZATIONS: tuple[str, ...] = ("mean", "sum")
HYPERGRADIENTS: tuple[str, ...] = ("forward", "double-backward", "finite-difference", "last-layer")
EXACT_HYPERGRADIENTS: tuple[str, ...] = ("forward", "double-backward")


def per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per sample, shape (n,): the default training loss."""
    return F.cross_entropy(logits, targets, reduction="none")


def mean_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy: the default meta loss."""
    return F.cross_entropy(logits, targets)


def normalize_weights(weights: Tensor, normalize: str) -> Tensor:
    """ṽ = v / Z with Z = n ("mean") or Z = Σ v ("sum", Z = 1 when Σ v = 0), differentiable in v."""
    if normalize == "mean":
        return weights / weights.shape[0]
    if normalize == "sum":
        total = weights.sum()
        return weights / torch.where(total == 0, torch.ones_like(total), total)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


@dataclass
class StepResult:
    """What one `MetaReweighter.step` did.

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


# --------------------------------------------------------------------------------------------------------------
# The functional core: ∂L_meta(ŵ)/∂ṽ for a batch, from explicit inputs.
# --------------------------------------------------------------------------------------------------------------


def weight_sensitivity(
    model: nn.Module,
    params: dict[str, Tensor],
    lrs: dict[str, float],
    buffers: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    losses: Tensor,
    weights: Tensor,
    meta_inputs: tuple[Tensor, ...],
    meta_targets: Tensor,
    *,
    loss_fn: LossFn = per_sample_cross_entropy,
    meta_loss_fn: LossFn = mean_cross_entropy,
    mode: str = "forward",
    rng_state: dict | None = None,
    last_layer: nn.Linear | None = None,
    features: Tensor | None = None,
    logits: Tensor | None = None,
    epsilon: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """∂L_meta(ŵ)/∂ṽᵢ for every training sample, and L_meta(ŵ) (detached).

    Args:
        model: the classifier; called through `functional_call`, never mutated.
        params: name → parameter for the parameters the virtual step moves (requires_grad, in the optimizer).
        lrs: name → the current learning rate α of that parameter's group.
        buffers: a snapshot of the model's buffers before this step; every pass here runs on clones of it.
        inputs, targets: the training batch; `losses` (n,) must be loss_fn(model(*inputs), targets) with its
            autograd graph to `params` (the first forward, shared with the real update).
        weights: (n,) normalised weights ṽ, detached.
        meta_inputs, meta_targets: the meta batch.
        mode: one of HYPERGRADIENTS.
        rng_state: RNG state captured just before the first forward, so that re-forwards over x (dual and
            finite-difference passes) see the same dropout masks.
        last_layer, features, logits: for mode "last-layer": the final nn.Linear, its input on x (detached) and
            its output on x (the model's output, with the graph that produced `losses`).
        epsilon: relative step for mode "finite-difference".
    """
    if mode == "last-layer":
        if last_layer is None or features is None or logits is None:
            raise ValueError("last-layer mode needs the final linear layer, its input features and the logits")
        return _last_layer_sensitivity(
            model, buffers, losses, logits, weights, features, last_layer, lrs, params, meta_inputs,
            meta_targets, meta_loss_fn,
        )
    names = list(params)
    if mode == "double-backward":
        # Differentiate the virtual step itself: ŵ = w − α ∇w Σ ṽᵢ ℓᵢ with ṽ a leaf, then a second-order
        # backward from L_meta(ŵ) into ṽ.
        leaf = weights.detach().requires_grad_(True)
        grads = torch.autograd.grad((leaf * losses).sum(), [params[k] for k in names], create_graph=True,
                                    retain_graph=True)
        virtual = {k: params[k] - lrs[k] * g for k, g in zip(names, grads)}
        meta_loss = meta_loss_fn(_call(model, virtual, buffers, meta_inputs), meta_targets)
        _check_finite_scalar(meta_loss, "meta loss")
        (sensitivity,) = torch.autograd.grad(meta_loss, leaf)
        return sensitivity, meta_loss.detach()

    # First-order modes: an ordinary backward gives ŵ, another gives ∇L_meta(ŵ).
    grads = torch.autograd.grad((weights.detach() * losses).sum(), [params[k] for k in names],
                                retain_graph=True)
    virtual = {k: (params[k].detach() - lrs[k] * g).requires_grad_(True) for k, g in zip(names, grads)}
    meta_loss = meta_loss_fn(_call(model, virtual, buffers, meta_inputs), meta_targets)
    _check_finite_scalar(meta_loss, "meta loss")
    meta_grads = torch.autograd.grad(meta_loss, [virtual[k] for k in names])
    # u = α ⊙ ∇L_meta(ŵ): the direction along which each sample's loss is differentiated.
    direction = {k: lrs[k] * g for k, g in zip(names, meta_grads)}
    primals = {k: params[k].detach() for k in names}
    if mode == "forward":
        tangent = _directional_derivative_forward(model, primals, direction, buffers, inputs, targets, loss_fn,
                                                  rng_state)
    elif mode == "finite-difference":
        tangent = _directional_derivative_central(model, primals, direction, buffers, inputs, targets, loss_fn,
                                                  rng_state, epsilon)
    else:
        raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {mode!r}")
    return -tangent, meta_loss.detach()


def _directional_derivative_forward(model, primals, direction, buffers, inputs, targets, loss_fn, rng_state):
    """sᵢ = ⟨∇w ℓᵢ(w), u⟩ for all i from one dual-number forward pass (forward-mode AD)."""
    with fwAD.dual_level(), _replayed_rng(rng_state), warnings.catch_warnings():
        # torch's first forward-AD call scripts its jvp decompositions and warns that torch.jit is deprecated.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        dual = {k: fwAD.make_dual(p, direction[k]) for k, p in primals.items()}
        # Batch norm updates its running statistics in place during this pass; they are throwaway clones.
        losses = loss_fn(_call(model, dual, buffers, inputs), targets)
        tangent = fwAD.unpack_dual(losses).tangent
    if tangent is None:  # the losses do not depend on the moved parameters at all
        return torch.zeros_like(losses)
    return tangent.detach()


@torch.no_grad()
def _directional_derivative_central(model, primals, direction, buffers, inputs, targets, loss_fn, rng_state,
                                    epsilon):
    """sᵢ ≈ (ℓᵢ(w + εu) − ℓᵢ(w − εu)) / 2ε, with ε scaled so that ‖εu‖ = epsilon · ‖w‖."""
    norm_u = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
    if norm_u == 0.0:
        return torch.zeros(targets.shape[0], dtype=next(iter(primals.values())).dtype,
                           device=targets.device)
    norm_w = math.sqrt(sum(float(p.pow(2).sum()) for p in primals.values()))
    eps = epsilon * max(norm_w, 1.0) / norm_u
    ends = []
    for sign in (1.0, -1.0):
        shifted = {k: p + sign * eps * direction[k] for k, p in primals.items()}
        with _replayed_rng(rng_state):
            ends.append(loss_fn(_call(model, shifted, buffers, inputs), targets))
    return (ends[0] - ends[1]) / (2 * eps)


def _last_layer_sensitivity(model, buffers, losses, logits, weights, features, layer, lrs, params, meta_inputs,
                            meta_targets, meta_loss_fn):
    """Closed-form ∂L_meta/∂ṽ when the virtual step moves only the final linear layer z = W h + b.

    With δᵢ = ∂ℓᵢ/∂zᵢ, ∇W ℓᵢ = δᵢ hᵢᵀ and ∇b ℓᵢ = δᵢ, so sᵢ = α_W δᵢᵀ G_W hᵢ + α_b δᵢᵀ g_b where (G_W, g_b)
    is the meta gradient at the virtual layer. The meta features come from one no-grad pass.
    """
    weight_name, bias_name = _layer_param_names(params, layer)
    # δ: per-sample loss gradients w.r.t. the logits; row i of ∇_z Σ ℓ is ∂ℓᵢ/∂zᵢ (losses are row-wise).
    delta = torch.autograd.grad(losses.sum(), logits, retain_graph=True)[0].detach()
    meta_features = _capture_input(model, layer, buffers, meta_inputs)
    w_virtual = layer.weight.detach() - lrs[weight_name] * ((weights[:, None] * delta).T @ features)
    w_virtual.requires_grad_(True)
    b_virtual = None
    if bias_name is not None:
        b_virtual = (layer.bias.detach() - lrs[bias_name] * (weights[:, None] * delta).sum(0)).requires_grad_()
    meta_logits = meta_features @ w_virtual.T
    if b_virtual is not None:
        meta_logits = meta_logits + b_virtual
    meta_loss = meta_loss_fn(meta_logits, meta_targets)
    _check_finite_scalar(meta_loss, "meta loss")
    if b_virtual is None:
        (g_w,) = torch.autograd.grad(meta_loss, [w_virtual])
        s = lrs[weight_name] * ((delta @ g_w) * features).sum(1)
    else:
        g_w, g_b = torch.autograd.grad(meta_loss, [w_virtual, b_virtual])
        s = lrs[weight_name] * ((delta @ g_w) * features).sum(1) + lrs[bias_name] * (delta @ g_b)
    return -s, meta_loss.detach()


def _layer_param_names(params: dict[str, Tensor], layer: nn.Linear) -> tuple[str, str | None]:
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
def _capture_input(model: nn.Module, layer: nn.Module, buffers: dict[str, Tensor], inputs: tuple[Tensor, ...]):
    """The input of `layer` during a train-mode, no-grad forward of `inputs` (on throwaway buffers)."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        _call(model, {}, buffers, inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"last-layer mode: the final linear layer ran {len(captured)} times in one forward")
    return captured[0].flatten(1)


def _call(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
          inputs: tuple[Tensor, ...]) -> Tensor:
    """model(*inputs) with `params` swapped in and throwaway clones of `buffers`."""
    scratch = {k: b.clone() for k, b in buffers.items()}
    return functional_call(model, {**params, **scratch}, inputs, strict=False)


def _check_finite_scalar(value: Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise ValueError(f"non-finite {what}: {value.detach().flatten()[:4].tolist()}")


@contextlib.contextmanager
def _replayed_rng(state: dict | None) -> Iterator[None]:
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
    """The RNG state to pass as `weight_sensitivity(rng_state=...)`: take it just before the first forward."""
    state = {"cpu": torch.get_rng_state(), "device": None}
    if device.type != "cpu" and device.type != "meta":
        module = torch.get_device_module(device.type)
        index = device.index if device.index is not None else module.current_device()
        state.update(device=index, device_type=device.type, accel=module.get_rng_state(index))
    return state


# --------------------------------------------------------------------------------------------------------------
# The object shell: holds the optimizers, validates, and performs virtual step → Θ update → real update.
# --------------------------------------------------------------------------------------------------------------


class MetaReweighter:
    """Meta-Weight-Net for the user's own model, optimizer and loop.

    Args:
        model: any `nn.Module` (called through `torch.func.functional_call`; layers are never rewritten).
        optimizer: the classifier's `torch.optim` optimizer (momentum, weight decay, schedulers all honoured).
        weight_net: the weighting function V, e.g. `MetaWeightNet()`.
        weight_optimizer: the optimizer of V's parameters.
        loss_fn: logits, targets → per-sample losses (n,) [cross-entropy].
        meta_loss_fn: logits, targets → scalar meta loss [mean cross-entropy].
        normalize: "mean" (Z = n) or "sum" (Z = Σ v, the paper's table scripts) ["mean"].
        hypergradient: how ∇Θ is computed; "forward" and "double-backward" are exact, "finite-difference"
            and "last-layer" approximate ["forward"].
        meta_interval: update Θ every k-th step only; other steps do just the weighted real update [1].
        last_layer: the final `nn.Linear` (or its name) for hypergradient="last-layer" [model.classifier, or
            the last nn.Linear in the model].
        epsilon: relative step of the finite-difference mode [1e-4].
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
        normalize: Normalize = "mean",
        hypergradient: Hypergradient = "forward",
        meta_interval: int = 1,
        last_layer: nn.Module | str | None = None,
        epsilon: float = 1e-4,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {hypergradient!r}")
        if not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be a positive integer, got {meta_interval!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.model = model
        self.optimizer = optimizer
        self.weight_net = weight_net
        self.weight_optimizer = weight_optimizer
        self.loss_fn = loss_fn or per_sample_cross_entropy
        self.meta_loss_fn = meta_loss_fn or mean_cross_entropy
        self.normalize = normalize
        self.hypergradient = hypergradient
        self.meta_interval = meta_interval
        self.epsilon = epsilon
        self.iteration = 0
        self.last_layer = _resolve_last_layer(model, last_layer) if hypergradient == "last-layer" else None
        self._check_optimizers()

    # -- public API -------------------------------------------------------------------------------------------

    def step(self, x: Tensor | Sequence[Tensor], y: Tensor, x_meta: Tensor | Sequence[Tensor] | None = None,
             y_meta: Tensor | None = None) -> StepResult:
        """One Meta-Weight-Net iteration: virtual step, weight-net update, real update (PAPER.md)."""
        inputs, meta_inputs = _as_inputs(x), (None if x_meta is None else _as_inputs(x_meta))
        update_meta = self.iteration % self.meta_interval == 0
        _check_batch(inputs, y, "training")
        if update_meta:
            if meta_inputs is None or y_meta is None:
                raise ValueError("a meta batch (x_meta, y_meta) is required on meta-update iterations")
            _check_batch(meta_inputs, y_meta, "meta")
        self._check_optimizers()
        was_training = self.model.training
        self.model.train()
        try:
            return self._step(inputs, y, meta_inputs, y_meta, update_meta)
        finally:
            self.model.train(was_training)

    def weights(self, losses: Tensor) -> Tensor:
        """V(ℓ; Θ) for given per-sample losses, without gradient: what the real update would use."""
        with torch.no_grad():
            return self._weights(losses.detach())

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])

    # -- internals --------------------------------------------------------------------------------------------

    def _step(self, inputs, y, meta_inputs, y_meta, update_meta: bool) -> StepResult:
        model = self.model
        device = y.device
        snapshot = {k: b.detach().clone() for k, b in model.named_buffers()}
        params, lrs = self._trainable()
        rng_state = capture_rng_state(device) if update_meta else None

        # First forward: train mode on scratch buffers, so nothing of the model changes until the step succeeds.
        # Its graph serves both the virtual step and the real update (no second forward over x).
        scratch = {k: b.clone() for k, b in snapshot.items()}
        features: list[Tensor] = []
        layer_outputs: list[Tensor] = []
        hook = None
        if update_meta and self.last_layer is not None:
            def keep(_module, args, out):
                features.append(args[0].detach().flatten(1))
                layer_outputs.append(out)

            hook = self.last_layer.register_forward_hook(keep)
        try:
            logits = functional_call(model, scratch, inputs, strict=False)
        finally:
            if hook is not None:
                hook.remove()
        losses = self.loss_fn(logits, y)
        if losses.shape != y.shape[:1]:
            raise ValueError(f"loss_fn must return per-sample losses of shape ({y.shape[0]},), "
                             f"got {tuple(losses.shape)}")
        if not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).sum())
            raise ValueError(f"non-finite training loss on {bad} of {losses.shape[0]} samples")

        meta_loss = float("nan")
        if update_meta:
            assert meta_inputs is not None and y_meta is not None
            weights = normalize_weights(self._weights(losses.detach()), self.normalize)
            if self.last_layer is not None:
                if len(features) != 1:
                    raise ValueError(f"last-layer mode: the final linear layer ran {len(features)} times")
                if layer_outputs[0] is not logits:
                    raise ValueError("last-layer mode: the model's output must be the final linear layer's output")
            sensitivity, meta_value = weight_sensitivity(
                model, params, lrs, snapshot, inputs, y, losses, weights.detach(), meta_inputs, y_meta,
                loss_fn=self.loss_fn, meta_loss_fn=self.meta_loss_fn, mode=self.hypergradient,
                rng_state=rng_state, last_layer=self.last_layer, features=features[0] if features else None,
                logits=logits, epsilon=self.epsilon,
            )
            theta = [p for p in self.weight_net.parameters() if p.requires_grad]
            # ∇Θ L_meta = Σᵢ (∂L_meta/∂ṽᵢ) ∂ṽᵢ/∂Θ: a backward through V alone.
            hyper = torch.autograd.grad(weights, theta, grad_outputs=sensitivity.to(weights.dtype),
                                        allow_unused=True)
            hyper = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, hyper)]
            if not all(torch.isfinite(g).all() for g in hyper):
                raise ValueError("non-finite hypergradient for the weight net")
            for p, g in zip(theta, hyper):
                p.grad = g
            self.weight_optimizer.step()
            meta_loss = float(meta_value)

        # Real update with the new Θ; the weights are constants here (no gradient to Θ).
        with torch.no_grad():
            new_weights = self._weights(losses.detach())
        real_loss = (normalize_weights(new_weights, self.normalize).to(losses.dtype) * losses).sum()
        self.optimizer.zero_grad()
        real_loss.backward()
        self.optimizer.step()
        # Commit the running statistics of the one train-mode forward on x.
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(scratch[name])
        self.iteration += 1
        return StepResult(loss=float(real_loss.detach()), meta_loss=meta_loss, weights=new_weights.detach(),
                          losses=losses.detach(), logits=logits.detach(), meta_updated=update_meta)

    def _weights(self, losses: Tensor) -> Tensor:
        """V(ℓ; Θ) in the weight net's dtype and device, returned in the losses' dtype."""
        reference = next(self.weight_net.parameters())
        out = self.weight_net(losses.to(dtype=reference.dtype, device=reference.device))
        return out.to(dtype=losses.dtype, device=losses.device)

    def _trainable(self) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The parameters the virtual step moves (in the optimizer, requiring grad) and their current lrs."""
        names = {id(p): k for k, p in self.model.named_parameters()}
        params: dict[str, Tensor] = {}
        lrs: dict[str, float] = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    params[names[id(p)]] = p
                    lrs[names[id(p)]] = float(group["lr"])
        if not params:
            raise ValueError("the optimizer holds no parameter of the model that requires grad")
        return params, lrs

    def _check_optimizers(self) -> None:
        model_ids = {id(p) for p in self.model.parameters()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in model_ids:
                    raise ValueError(f"optimizer holds a parameter of shape {tuple(p.shape)} that is not in "
                                     f"the model")
        wnet_ids = {id(p) for p in self.weight_net.parameters()}
        for group in self.weight_optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in wnet_ids:
                    raise ValueError(f"weight_optimizer holds a parameter of shape {tuple(p.shape)} that is not "
                                     f"in the weight net")


def _as_inputs(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise ValueError(f"inputs must be a tensor or a non-empty tuple of tensors, got {type(x).__name__}")


def _check_batch(inputs: tuple[Tensor, ...], y: Tensor, what: str) -> None:
    n = inputs[0].shape[0] if inputs[0].dim() > 0 else 0
    if n == 0:
        raise ValueError(f"empty {what} batch")
    for t in inputs[1:]:
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(f"{what} inputs disagree in batch size: {[tuple(t.shape) for t in inputs]}")
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"{what} batch has {n} inputs but {y.shape[0] if y.dim() else 0} targets")


def _resolve_last_layer(model: nn.Module, last_layer: nn.Module | str | None) -> nn.Linear:
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
