"""CMW-Net-SL (Shu et al., TPAMI 2023): sample weighting with label correction, on the one step (`mwnet.step`).

A sample's loss mixes its observed label yᵢ and a soft label p̃ᵢ, the prediction of an EMA teacher of the
classifier, by its weight vᵢ = V(ℓᵢ, yᵢ; Θ) (docs/algorithm.md, "CMW-Net and CMW-Net-SL"):

    Lᵢ(w, vᵢ) = vᵢ · Aᵢ(w) + (1 − vᵢ) · Bᵢ(w),   Aᵢ = CE(f(xᵢ; w), yᵢ),   Bᵢ = CE(f(xᵢ; w), p̃ᵢ),   ℓᵢ = Aᵢ

The batch loss is (1/n) Σᵢ Lᵢ. It is linear in the per-sample coefficients cᵢ = (vᵢ, 1 − vᵢ) / n of the two loss
terms (Aᵢ, Bᵢ), so it is the core's weighted loss Σᵢⱼ cᵢⱼ ℓᵢⱼ with two terms per sample (`StepOptions.loss_terms`):
the same virtual step, hypergradient modes, batch-norm semantics and all-or-nothing update as MW-Net. A mode gives
∂L_meta/∂c (n, 2), and Θ's gradient is its backward through c(Θ): ∂L_meta/∂vᵢ = (∂L_meta/∂cᵢ₁ − ∂L_meta/∂cᵢ₂) / n.

With mixup (the authors' script), row i of the batch is λxᵢ + (1 − λ)x_π(i) (λ ~ Beta(α, α), λ ≥ 1/2) and its
loss is λ Lᵢ + (1 − λ) L_π(i) on that row's output: sample j's label and soft label enter row j with λ and row
π⁻¹(j) with 1 − λ, still with the one weight vⱼ. The meta batch is mixed likewise (λ' ~ Beta(1, 1)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.distributed import current_shards
from mwnet.hypergradients import check_mode, weight_sensitivity
from mwnet.hypergradients.problem import call_with_buffers
from mwnet.losses import LossFn, mean_cross_entropy, per_sample_cross_entropy
from mwnet.module_state import check_owned, step_weight_net, trainable_parameters, training_mode
from mwnet.step import FirstForward, StepOptions, StepResult, Weighting, reweighted_step
from mwnet.weighting import apply_weight_net


def soft_label_loss_terms(logits: Tensor, targets: Tensor, teacher_probs: Tensor, *, lam: float = 1.0,
                          partner: Tensor | None = None) -> Tensor:
    """(n, 2): column 0 sample j's loss on its label yⱼ, column 1 on its soft label p̃ⱼ.

    Without mixup (lam = 1): (CE(zⱼ, yⱼ), −Σₖ p̃ⱼₖ log softmax(zⱼ)ₖ). With mixup, `partner[j]` = π⁻¹(j) is the row
    in which sample j is the minor part, and each term is λ·(the term on row j) + (1 − λ)·(on row π⁻¹(j)).
    """
    log_p = F.log_softmax(logits, dim=1)
    label = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    soft = -(teacher_probs * log_p).sum(1)
    if partner is None or lam == 1.0:
        return torch.stack([label, soft], dim=1)
    other = log_p[partner]
    label_other = -other.gather(1, targets.unsqueeze(1)).squeeze(1)
    soft_other = -(teacher_probs * other).sum(1)
    return torch.stack([lam * label + (1 - lam) * label_other, lam * soft + (1 - lam) * soft_other], dim=1)


def mixed_cross_entropy(logits: Tensor, targets: Tensor, *, partner_targets: Tensor, lam: float) -> Tensor:
    """λ·CE(z, y) + (1 − λ)·CE(z, y_π), means over the batch: the meta loss on a mixed meta batch."""
    return lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, partner_targets)


def draw_mixup(n: int, alpha: float, device: torch.device) -> tuple[float, Tensor]:
    """(λ, π): λ ~ Beta(α, α) folded to λ ≥ 1/2 (the authors' max(λ, 1 − λ)), π a random permutation of n; from
    torch's global generator, which a run's checkpoint saves."""
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    return max(lam, 1.0 - lam), torch.randperm(n).to(device)


class EMATeacher:
    """An exponential moving average of the classifier's parameters, t ← d·t + (1 − d)·w after every real update.

    Its prediction runs the classifier's own module with the averaged parameters swapped in, in train mode on
    throwaway buffers, as the authors' script calls its `model_ema.train()` (batch statistics under batch norm).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not (isinstance(decay, (int, float)) and 0 <= decay <= 1):
            raise ValueError(f"teacher decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.params = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.params[name].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def probabilities(self, model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
        """(n, K) softmax of the teacher's logits on `inputs`."""
        buffers = {k: b.detach() for k, b in model.named_buffers()}
        with training_mode(model):
            logits = call_with_buffers(model, self.params, buffers, inputs)
        return F.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)


class LabelCorrectingReweighter:
    """CMW-Net-SL for the user's own model, optimizer and loop: V(ℓ, y) mixes each sample's label with an EMA
    teacher's soft label, learned against the clean meta set.

    Args:
        model, optimizer: the classifier and its `torch.optim` optimizer.
        weight_net: V, e.g. `ClassAwareWeightNet(class_heads(counts))` (or any V(ℓ) such as `MetaWeightNet`).
        weight_optimizer: the optimizer of V's parameters.
        hypergradient: "forward", "double-backward" (exact) or "finite-difference" ["forward"].
        meta_interval: update Θ every k-th step (the authors: 10) [1].
        teacher_decay: the EMA teacher's decay d (the authors: 0.997) [0.997].
        mixup_alpha: mix every training batch with λ ~ Beta(α, α), and every meta batch with Beta(1, 1), as the
            authors' script [None: no mixup].

    `warmup_step(x, y)` is one step of plain mean cross-entropy (the teacher follows it too); `step` is the
    label-correcting meta step. The loss has no normalisation choice: a sample's two coefficients sum to 1, so
    "sum" and "mean" give the same Z = n. One process only (no torch.distributed).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                 weight_optimizer: torch.optim.Optimizer, *, hypergradient: str = "forward", meta_interval: int = 1,
                 teacher_decay: float = 0.997, mixup_alpha: float | None = None) -> None:
        check_mode(hypergradient)
        if hypergradient == "last-layer":
            raise ValueError("CMW-Net-SL needs one of the hypergradients 'forward', 'double-backward' or "
                             "'finite-difference', not 'last-layer' (its loss has two terms per sample)")
        if isinstance(meta_interval, bool) or not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be a positive integer, got {meta_interval!r}")
        if mixup_alpha is not None and not (isinstance(mixup_alpha, (int, float)) and 0 < mixup_alpha < math.inf):
            raise ValueError(f"mixup_alpha must be positive and finite (or None: no mixup), got {mixup_alpha!r}")
        trainable_parameters(model, optimizer)
        check_owned(weight_optimizer, weight_net, "weight_optimizer", "the weight net")
        self.model, self.optimizer = model, optimizer
        self.weight_net, self.weight_optimizer = weight_net, weight_optimizer
        self.hypergradient, self.meta_interval, self.mixup_alpha = hypergradient, meta_interval, mixup_alpha
        self.teacher = EMATeacher(model, teacher_decay)
        self.iteration = 0

    def warmup_step(self, x: Tensor | Sequence[Tensor], y: Tensor) -> StepResult:
        """One step on the mean cross-entropy (every weight 1), then the teacher's update."""

        def rule(first: FirstForward) -> Weighting:
            ones = torch.ones_like(first.losses.detach())
            return Weighting(ones / ones.shape[0], ones)

        result = reweighted_step(self.model, self.optimizer, x, y, rule, check=self._check)
        if not result.skipped:
            self.teacher.update(self.model)
        return result

    def step(self, x: Tensor | Sequence[Tensor], y: Tensor, x_meta: Tensor | None = None,
             y_meta: Tensor | None = None) -> StepResult:
        """One CMW-Net-SL iteration: virtual step on (1/n) Σ Lᵢ, Θ update, real update with V(ℓ, y; Θ_new)."""
        update_meta = self.iteration % self.meta_interval == 0
        if update_meta and (x_meta is None or y_meta is None):
            raise ValueError("a meta batch (x_meta, y_meta) is required on meta-update iterations")
        inputs = (x,) if isinstance(x, Tensor) else tuple(x)
        probabilities = self.teacher.probabilities(self.model, inputs)
        lam, partner, meta_loss_fn = 1.0, None, mean_cross_entropy
        if self.mixup_alpha is not None:
            if not isinstance(x, Tensor):
                raise ValueError("mixup needs the inputs as one tensor")
            lam, perm = draw_mixup(y.shape[0], self.mixup_alpha, y.device)
            x = lam * x + (1 - lam) * x[perm]
            partner = torch.argsort(perm)
            if update_meta:
                assert x_meta is not None and y_meta is not None
                meta_lam, meta_perm = draw_mixup(y_meta.shape[0], 1.0, y_meta.device)
                x_meta = meta_lam * x_meta + (1 - meta_lam) * x_meta[meta_perm]
                meta_loss_fn = functools.partial(mixed_cross_entropy, partner_targets=y_meta[meta_perm],
                                                 lam=meta_lam)
        loss_fn = functools.partial(soft_label_loss_terms, teacher_probs=probabilities, lam=lam, partner=partner)
        seen: dict[str, Tensor] = {}

        def rule(first: FirstForward) -> Weighting:
            # V's input: each row's cross-entropy on its own label, a constant (the authors' cost.data).
            losses = per_sample_cross_entropy(first.extras.logits.detach(), first.targets)
            seen["losses"] = losses
            if not update_meta:
                with torch.no_grad():
                    weights = self._weights(losses, first.targets)
                return Weighting(_coefficients(weights), weights)
            return self._meta_update(first, losses, meta_loss_fn)

        meta = (x_meta, y_meta) if update_meta else None
        result = reweighted_step(self.model, self.optimizer, x, y, rule, meta=meta,  # type: ignore[arg-type]
                                 options=StepOptions(loss_fn=loss_fn, loss_terms=2), replay_rng=update_meta,
                                 check=self._check)
        if not result.skipped:
            self.iteration += 1
            self.teacher.update(self.model)
        result.losses = seen["losses"]
        return result

    def weights(self, losses: Tensor, targets: Tensor | None = None) -> Tensor:
        """V(ℓ, y; Θ) without gradient: the weight of the label term (1 − it, of the soft-label term)."""
        with torch.no_grad():
            return self._weights(losses.detach(), targets)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "weight_net": self.weight_net.state_dict(),
                "weight_optimizer": self.weight_optimizer.state_dict(),
                "teacher": {k: t.clone() for k, t in self.teacher.params.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.weight_net.load_state_dict(state["weight_net"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        with torch.no_grad():
            for name, value in state["teacher"].items():
                self.teacher.params[name].copy_(value)

    def _check(self) -> None:
        if current_shards(None) is not None:
            raise ValueError("CMW-Net-SL runs in one process (no torch.distributed)")
        check_owned(self.weight_optimizer, self.weight_net, "weight_optimizer", "the weight net")

    def _meta_update(self, first: FirstForward, losses: Tensor, meta_loss_fn: LossFn) -> Weighting:
        """Θ ← opt_Θ(∇Θ L_meta(ŵ(Θ))) through the coefficients c(Θ) = (v, 1 − v)/n; then V(ℓ, y; Θ_new)."""
        coefficients = _coefficients(self._weights(losses, first.targets))
        sensitivity, meta_loss = weight_sensitivity(first.problem(meta_loss_fn), coefficients.detach(),
                                                    self.hypergradient, first.extras)
        theta = [p for p in self.weight_net.parameters() if p.requires_grad]
        hyper = torch.autograd.grad(coefficients, theta, grad_outputs=sensitivity.to(coefficients.dtype),
                                    allow_unused=True)
        hyper = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, hyper)]
        restore = step_weight_net(self.weight_net, self.weight_optimizer, hyper)
        with torch.no_grad():
            weights = self._weights(losses, first.targets)
        return Weighting(_coefficients(weights), weights, meta_loss, True, restore)

    def _weights(self, losses: Tensor, targets: Tensor | None) -> Tensor:
        return apply_weight_net(self.weight_net, losses, targets)


def _coefficients(weights: Tensor) -> Tensor:
    """(n, 2): (vᵢ, 1 − vᵢ) / n, the coefficients of a sample's label and soft-label terms in the batch loss."""
    return torch.stack([weights, 1 - weights], dim=1) / weights.shape[0]
