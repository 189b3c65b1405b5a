"""A learned weighting function reused: train with the frozen V of an earlier Meta-Weight-Net run.

CMW-Net (Shu et al., TPAMI 2023) shows that a learned V(ℓ) transfers to other data and noise. Frozen, V needs no
meta set and no bi-level step: each iteration is the weighted real update of docs/algorithm.md ("One iteration",
step 4) alone, Σᵢ ṽᵢ ℓᵢ with vᵢ = V(ℓᵢ) under no_grad, at about the cost of plain cross-entropy. The first epochs
are plain CE (`weight_net_warmup_epochs`, a third of the run by default): V was learned on the losses of a model
that had fitted the clean labels; on a fresh model's losses (all ≈ ln K) it favours whichever samples the model
happens to fit first, and without a meta set to correct it that feedback collapsed a Fashion-MNIST run to one
class within its first epoch (measured, benchmarks/label-issues). It is a method of
its own, not an option of `mwnet`, because it shares none of MW-Net's step (no meta batch, no virtual step, no V
optimiser): `uses_meta` is False for the class, and MW-Net's meta options cannot silently do nothing here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mwnet.losses import normalize_weights
from mwnet.methods import register_method
from mwnet.methods.base import Method, MethodContext, check_finite_losses
from mwnet.methods.options import NON_NEGATIVE, option
from mwnet.step import StepResult
from mwnet.weighting import MetaWeightNet


class WeightNetSourceError(ValueError):
    """The run directory given to reuse a weight net holds none that can be reused. Attributes: run_dir."""

    def __init__(self, run_dir: Path, why: str) -> None:
        self.run_dir = run_dir
        super().__init__(f"cannot reuse the weight net of {run_dir}: {why}")


@dataclass(frozen=True)
class FrozenWeightNetOptions:
    """Options of the `frozen-vnet` method; `TrainConfig` inherits them, so each is a `mwnet train` flag."""

    weight_net_from: str | None = option(
        None, "method frozen-vnet: train with the frozen weight net V of this earlier mwnet run directory (its "
              "checkpoint.pt); needs no meta set (--num-meta 0), costs about as much as CE")
    weight_net_warmup_epochs: int | None = option(
        None, "method frozen-vnet: epochs of plain CE before the frozen V weights the samples (V misreads a fresh "
              "model's losses) [a third of the epochs]", check=NON_NEGATIVE)


def load_weight_net(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[MetaWeightNet, str]:
    """(V, normalisation) of a run of `mwnet` (or `frozen-vnet`): V as its checkpoint.pt holds it, in eval mode
    with gradients off, and the run's normalisation ("sum" or "mean"), which the weights were learned under.

    Raises:
        WeightNetSourceError: no such directory, no checkpoint.pt or config.json, or a method without a loss-only
            weight net V(ℓ) (e.g. ce; or a class-aware net, which needs the labels).
    """
    from mwnet.experiment.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WeightNetSourceError(run_dir, "no such run directory")
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise WeightNetSourceError(run_dir, f"no {name} (a run directory of `mwnet train --method mwnet` is "
                                                f"needed)")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightNetSourceError(run_dir, f"unreadable config.json ({exc})") from None
    method = config.get("method") if isinstance(config, dict) else None
    state = load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu").get("method")
    weights = state.get("weight_net") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise WeightNetSourceError(run_dir, f"its method {method!r} learns no weight net (reuse an mwnet run)")
    net = _loss_only_net(weights)
    if net is None:
        raise WeightNetSourceError(run_dir, f"its weight net (method {method!r}) is not a loss-only V(ℓ) "
                                            f"MetaWeightNet")
    normalize = state.get("normalize", config.get("normalize", "sum"))
    if normalize not in ("sum", "mean"):
        raise WeightNetSourceError(run_dir, f"unknown normalisation {normalize!r} in its config.json")
    return net.to(device).eval().requires_grad_(False), normalize


def _loss_only_net(state: dict) -> MetaWeightNet | None:
    """A MetaWeightNet holding `state` (its widths read from the shapes), or None where the state is another net."""
    shapes = [state.get(f"layers.{i}.weight") for i in range(0, 2 * len(state), 2)]
    shapes = [w.shape for w in shapes if isinstance(w, Tensor)]
    if len(shapes) < 2 or any(len(s) != 2 for s in shapes) or shapes[0][1] != 1 or shapes[-1][0] != 1:
        return None
    net = MetaWeightNet(hidden=tuple(int(s[0]) for s in shapes[:-1]))
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError):
        return None
    return net


@register_method("frozen-vnet")
class FrozenWeightNetMethod(Method):
    """Weighted cross-entropy with the frozen V of an earlier MW-Net run: Σ V(ℓᵢ) ℓᵢ / Z, V never updated."""

    uses_meta = False
    Options = FrozenWeightNetOptions

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: MethodContext,
                 options: FrozenWeightNetOptions) -> None:
        super().__init__(model, optimizer, context, options)
        if options.weight_net_from is None:
            raise ValueError("method 'frozen-vnet' needs weight_net_from (--weight-net-from RUN_DIR): the mwnet "
                             "run whose weight net it reuses")
        self.weight_net, self.normalize = load_weight_net(options.weight_net_from, context.device)
        warmup = options.weight_net_warmup_epochs
        self.warmup_epochs = context.epochs // 3 if warmup is None else warmup
        self.weighting = self.warmup_epochs == 0

    def start_epoch(self, epoch: int) -> None:
        self.weighting = epoch >= self.warmup_epochs

    def step(self, x: Tensor, y: Tensor, x_meta: Tensor | None = None, y_meta: Tensor | None = None) -> StepResult:
        if not self.model.training:  # only then as a whole: a frozen-BN backbone the user put in eval mode stays so
            self.model.train()
        logits = self.model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        check_finite_losses(losses)
        weights = self.sample_weights(losses, y) if self.weighting else torch.ones_like(losses)
        loss = (normalize_weights(weights.to(losses.dtype), self.normalize if self.weighting else "mean")
                * losses).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return StepResult(loss=float(loss.detach()), meta_loss=math.nan, weights=weights, losses=losses.detach(),
                          logits=logits.detach(), meta_updated=False)

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            return self.weight_net(losses.detach().to(next(self.weight_net.parameters()).dtype))

    def weight_curve(self, losses: Tensor) -> Tensor:
        return self.sample_weights(losses, losses)

    def state_dict(self) -> dict:
        # V travels with the run, so a resumed run (and `mwnet label-issues`) uses the V it started with.
        return {"weight_net": self.weight_net.state_dict(), "normalize": self.normalize}

    def load_state_dict(self, state: dict) -> None:
        self.weight_net.load_state_dict(state["weight_net"])
        self.normalize = state["normalize"]
