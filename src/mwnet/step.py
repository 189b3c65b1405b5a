"""The one step every meta method shares: first forward, a weighting rule, the weighted real update.

`reweighted_step` runs a train-mode forward on x whose graph serves both the virtual and the real update, asks a
weighting rule for the normalised weights ṽ (MW-Net's rule is `MetaReweighter` in `mwnet.core`, L2RW's in
`mwnet.methods.l2rw`), then steps the optimizer on Σᵢ ṽᵢ ℓᵢ. It is all or nothing: on any error the model, its
buffers and the optimizers are as they were. Batch norm follows the official code: every extra pass runs in train
mode on throwaway copies of the buffers; the model's running statistics change once per step, exactly as after
one train-mode forward on x. Each phase is marked with `record_function` (names in `STEP_PHASES`), so a profiler
shows where the time goes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.func import functional_call

from mwnet.distributed import Traffic, check_supported, current_shards, global_sum, sum_gradients, unwrap
from mwnet.errors import NonFiniteLossError
from mwnet.hypergradients import ModeInputs, VirtualStep, capture_rng_state
from mwnet.hypergradients.problem import BatchProblem
from mwnet.hypergradients.tangents import PrimalCache
from mwnet.inputs import as_inputs, check_batch, check_class_targets, describe, detached, first_line
from mwnet.losses import LossFn, per_sample_cross_entropy
from mwnet.module_state import captured_layer, trainable_parameters, training_mode
from mwnet.precision import autocast, check_device, check_precision, full_precision

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
        logits may be any output of the model (a tensor, a dict, a `ModelOutput`), detached.
        skipped: the gradient scaler found an overflow: nothing changed but the scaler's scale.
    """

    loss: float
    meta_loss: float
    weights: Tensor
    losses: Tensor
    logits: Any
    meta_updated: bool
    skipped: bool = False


@dataclass(frozen=True)
class StepOptions:
    """How a step runs, beyond its batches and its weighting rule.

    Attributes:
        loss_fn: model output, targets → per-sample losses (n,).
        precision: autocast dtype of every forward of the classifier: "fp32", "bf16", "fp16" (mwnet.precision).
        max_grad_norm: clip the real update's gradient to this global norm (after unscaling) [None: no clipping].
        scaler: a `torch.amp.GradScaler`; the virtual and meta gradients and the real update are scaled by it,
            and an overflow skips the step (StepResult.skipped) [None].
        group: the torch.distributed process group whose ranks hold shards of one global batch [default group].
        traffic: counts this rank's collectives and bytes.
        loss_terms: k when loss_fn returns (n, k) loss *terms* per sample instead of (n,) losses; the rule then
            gives one coefficient per term (normalized (n, k)) and the real loss is Σᵢⱼ cᵢⱼ ℓᵢⱼ, the virtual step
            alike (CMW-Net-SL: a sample's loss on its label and on a teacher's soft label, mwnet.label_correction;
            the "last-layer" hypergradient needs one loss per sample) [None: (n,) losses].
    """

    loss_fn: LossFn = per_sample_cross_entropy
    precision: str = "fp32"
    max_grad_norm: float | None = None
    scaler: Any = None
    group: dist.ProcessGroup | None = None
    traffic: Traffic | None = None
    loss_terms: int | None = None


@dataclass(frozen=True, kw_only=True)
class FirstForward(BatchProblem):
    """The step's first forward on x, handed to a weighting rule; `problem()` poses the virtual step on it.

    Attributes:
        extras: the inputs only some hypergradient modes use (RNG state, recorded primals, the last layer).
        global_size: n summed over ranks (= n in one process).
    """

    extras: ModeInputs
    global_size: int = 0

    def problem(self, meta_loss_fn: LossFn) -> VirtualStep:
        assert self.meta_targets is not None, "the step was given no meta batch"
        batch = {f.name: getattr(self, f.name) for f in fields(BatchProblem)}
        return VirtualStep(**batch, meta_loss_fn=meta_loss_fn)

    def normalizer(self, weights: Tensor, normalize: str) -> Tensor:
        """Z over every rank's samples, detached: Σ v ("sum", 1 when Σ v = 0) or the global n ("mean")."""
        if normalize == "mean":
            return torch.tensor(float(self.global_size), dtype=weights.dtype, device=weights.device)
        total = global_sum(weights.detach().sum(), self.shards)
        return torch.where(total == 0, torch.ones_like(total), total)


@dataclass
class Weighting:
    """A weighting rule's answer: the normalised weights ṽ of the real update and what to report.

    `rollback` undoes what the rule changed (Θ and its optimizer) if the real update is then refused.
    """

    normalized: Tensor
    reported: Tensor
    meta_loss: float | Tensor = math.nan
    meta_updated: bool = False
    rollback: Callable[[], None] = field(default=lambda: None)


WeightRule = Callable[[FirstForward], Weighting]


def reweighted_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor | Sequence[Tensor], y: Tensor,
                    rule: WeightRule, *, meta: tuple[Tensor | Sequence[Tensor], Tensor] | None = None,
                    options: StepOptions = StepOptions(), replay_rng: bool = True,
                    last_layer: nn.Linear | None = None, check: Callable[[], None] | None = None,
                    zero_grad: bool = True, apply: bool = True, record_primals: bool = False) -> StepResult:
    """First forward on x, `rule` chooses the weights, then the weighted real update; all or nothing.

    Any error (bad input, a non-finite loss or weight) leaves the model, its buffers and the optimizer as they
    were. `meta` is the meta batch the rule may use; `check` runs the caller's own input checks with the step's.
    `replay_rng` keeps the RNG state of the first forward for re-forwards over x (dropout masks); `last_layer`
    captures that layer's input and output for the "last-layer" mode. Gradient accumulation: `zero_grad` clears
    the gradients before this step's backward, `apply` steps the optimizer after it. `record_primals` keeps the
    first forward's convolution and linear outputs for a tangent-only dual pass. Under torch.distributed
    (world size > 1), the ranks' batches are shards of one global batch (mwnet.distributed) and a failure on any
    rank raises on every rank.
    """
    shards = current_shards(options.group, options.traffic)
    module = unwrap(model)
    error: Exception | None = None
    try:
        if check is not None:
            check()
        if shards is not None:
            check_supported(module)
        first, output, scratch = _first_forward(module, optimizer, x, y, meta, options, replay_rng, last_layer,
                                                PrimalCache() if record_primals else None)
    except Exception as exc:
        if shards is None:
            raise
        error = exc
    if shards is not None:
        sizes = shards.agree(error, [y.shape[0] if y.dim() else 0, 0 if meta is None else meta[1].shape[0]])
        first = replace(
            first, shards=shards, global_size=sizes[0],
            meta_fraction=(first.meta_targets.shape[0] / sizes[1]) if first.meta_targets is not None else 1.0)
    losses = first.losses
    with training_mode(module):
        try:
            weighting = rule(first)
        except NonFiniteLossError:
            if options.scaler is None:
                raise
            # An overflow of the scaled virtual or meta gradients: nothing changed; lower the scale, skip.
            options.scaler.scale(losses.detach().sum())  # a scaler that never scaled holds no scale tensor yet
            options.scaler.update(new_scale=first.loss_scale * options.scaler.get_backoff_factor())
            return StepResult(math.nan, math.nan, torch.full_like(losses, math.nan).detach(), losses.detach(),
                              detached(output), False, skipped=True)
    with record_function("mwnet.real_update"):
        try:
            real_loss = (weighting.normalized.to(losses.dtype) * losses).sum()
            if shards is not None and not apply:
                real_loss_total = global_sum(real_loss.detach(), shards)
                if not torch.isfinite(real_loss_total):
                    raise NonFiniteLossError("weighted training loss", str(float(real_loss_total)))
            elif shards is None and not torch.isfinite(real_loss):  # the one check of the weights and the loss
                if not torch.isfinite(weighting.normalized).all():
                    what = "sample weights after the weight-net update" if weighting.meta_updated else "sample weights"
                    raise NonFiniteLossError(what)
                raise NonFiniteLossError("weighted training loss", str(float(real_loss.detach())))
            if zero_grad:
                optimizer.zero_grad()
            (real_loss if options.scaler is None else options.scaler.scale(real_loss)).backward()
            if shards is not None and apply:  # the global gradient Σ over ranks, and the global loss, in one all-reduce
                real_loss = sum_gradients(first.params, real_loss, shards)
            elif shards is not None:
                real_loss = real_loss_total
        except BaseException:
            weighting.rollback()
            raise
        if apply and not _optimizer_step(optimizer, first.params, options):
            weighting.rollback()
            optimizer.zero_grad()
            return StepResult(math.nan, math.nan, weighting.reported.detach(), losses.detach(), detached(output),
                              False, skipped=True)
        with torch.no_grad():  # commit the running statistics of the one train-mode forward on x
            for name, buffer in module.named_buffers():
                buffer.copy_(scratch[name])
        if shards is not None:
            shards.broadcast_buffers(module)
    # Both reported numbers in one host sync.
    device = real_loss.device
    loss, meta_loss = torch.stack([real_loss.detach().double(), torch.as_tensor(
        weighting.meta_loss, dtype=torch.float64, device=device).reshape(())]).tolist()
    return StepResult(loss=loss, meta_loss=meta_loss, weights=weighting.reported.detach(), losses=losses.detach(),
                      logits=detached(output), meta_updated=weighting.meta_updated)


def _optimizer_step(optimizer: torch.optim.Optimizer, params: dict[str, Tensor], options: StepOptions) -> bool:
    """Unscale, clip, step; False when the gradient scaler found an overflow and skipped the step."""
    scaler = options.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if options.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(params.values()), options.max_grad_norm)
    if scaler is None:
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # GradScaler lowers its scale exactly when it skipped the step


def _first_forward(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor | Sequence[Tensor], y: Tensor,
                   meta: tuple[Tensor | Sequence[Tensor], Tensor] | None, options: StepOptions, replay_rng: bool,
                   last_layer: nn.Linear | None, primals: PrimalCache | None
                   ) -> tuple[FirstForward, Any, dict[str, Tensor]]:
    """Checks, then the train-mode forward on x whose graph serves the virtual and the real update."""
    inputs = as_inputs(x)
    check_batch(inputs, y, "training")
    precision, loss_fn = options.precision, options.loss_fn
    check_precision(precision)
    check_device(precision, y.device)
    meta_inputs: tuple[Tensor, ...] = ()
    meta_targets = None
    if meta is not None:
        meta_inputs, meta_targets = as_inputs(meta[0]), meta[1]
        check_batch(meta_inputs, meta_targets, "meta")
    params, lrs = trainable_parameters(model, optimizer)
    snapshot = {k: b.detach().clone() for k, b in model.named_buffers()}
    rng_state = capture_rng_state(y.device) if replay_rng else None
    with training_mode(model), record_function("mwnet.forward"):
        # Scratch buffers, so nothing of the model changes until the step succeeds.
        scratch = {k: b.clone() for k, b in snapshot.items()}
        try:
            recording = primals.recording(model) if primals is not None else contextlib.nullcontext()
            with captured_layer(last_layer) as captured, autocast(precision, y.device), recording:
                output = functional_call(model, scratch, inputs, strict=False)
            logits = full_precision(output)
            if loss_fn is per_sample_cross_entropy:
                check_class_targets(logits, y)
            losses = loss_fn(logits, y)
        except (RuntimeError, IndexError, TypeError) as exc:  # wrong dtypes, devices, shapes, output types
            raise ValueError(f"the model or loss_fn failed on the training batch ({describe(inputs, y)}): "
                             f"{first_line(exc)}") from exc
        shape = y.shape[:1] if options.loss_terms is None else (y.shape[0], options.loss_terms)
        if not isinstance(losses, Tensor) or losses.shape != shape:
            what = "losses" if options.loss_terms is None else "loss terms"
            raise ValueError(f"loss_fn must return per-sample {what} of shape {tuple(shape)}, "
                             f"got {tuple(getattr(losses, 'shape', ())) or type(losses).__name__}")
        if not torch.isfinite(losses).all():
            bad = int((~torch.isfinite(losses)).sum())
            raise NonFiniteLossError("training loss", f"{bad} of {losses.shape[0]} samples")
    extras = ModeInputs(rng_state=rng_state, logits=logits, primals=primals)
    if last_layer is not None:
        if len(captured) != 1:
            raise ValueError(f"last-layer mode: the final linear layer ran {len(captured)} times")
        if captured[0][1] is not output:
            raise ValueError("last-layer mode: the model's output must be the final linear layer's output")
        extras = ModeInputs(rng_state=rng_state, last_layer=last_layer, features=full_precision(captured[0][0]),
                            logits=logits)
    scale = float(options.scaler.get_scale()) if options.scaler is not None and options.scaler.is_enabled() else 1.0
    first = FirstForward(model=model, params=params, lrs=lrs, buffers=snapshot, inputs=inputs, targets=y,
                         losses=losses, loss_fn=loss_fn, meta_inputs=meta_inputs, meta_targets=meta_targets,
                         precision=precision, loss_scale=scale, extras=extras, global_size=y.shape[0])
    return first, output, scratch
