"""CMW-Net (Shu et al., TPAMI 2023) as a runner method: MW-Net's step with a class-aware weighting function.

V(ℓ, y) has one head per cluster of classes, the clusters from k-means over the training counts of the observed
labels (`mwnet.weighting.class_heads`): under a long tail the rare classes get a head of their own, so their
samples can be weighted up where a loss-only V cannot tell them from hard or mislabelled head-class samples.
Everything else is `mwnet` (`MetaReweighter`, its options, its step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mwnet.methods import register_method
from mwnet.methods.mwnet import MetaWeightNetMethod, MWNetOptions
from mwnet.methods.options import POSITIVE_INT, option
from mwnet.weighting import ClassAwareWeightNet, class_heads


@dataclass(frozen=True)
class CMWNetOptions(MWNetOptions):
    """Options of the `cmwnet` method: MW-Net's, and the number of heads. `TrainConfig` inherits them."""

    weight_net_heads: int = option(3, "cmwnet, cmwnet-sl: heads of the class-aware weight net, one per k-means "
                                      "cluster of the per-class training counts (the authors: 3)", check=POSITIVE_INT)


class ClassAwareCurves:
    """What a method with a class-aware V reports: weights given the labels, and one curve per head."""

    reweighter: Any
    weight_net: Any
    context: Any

    def sample_weights(self, losses: Tensor, targets: Tensor) -> Tensor:
        return self.reweighter.weights(losses, targets)

    def weight_curve(self, losses: Tensor) -> None:
        return None  # the weight depends on the class too: see head_curves

    def head_curves(self, losses: Tensor) -> dict[str, Tensor]:
        return head_curves(self.weight_net, self.context.class_counts, losses)


@register_method("cmwnet")
class ClassAwareMetaWeightNet(ClassAwareCurves, MetaWeightNetMethod):
    """CMW-Net: per-sample weights V(ℓ, y; Θ), one head per cluster of class sizes, learned on the meta set."""

    Options = CMWNetOptions

    def make_weight_net(self) -> torch.nn.Module:
        heads = class_heads(self.context.class_counts, self.options.weight_net_heads)
        return ClassAwareWeightNet(heads, hidden=self.options.weight_net_hidden, init=self.options.weight_net_init)



def head_curves(weight_net: ClassAwareWeightNet, counts: tuple[int, ...], losses: Tensor) -> dict[str, Tensor]:
    """V(ℓ) of every head, named by its classes and their training counts: "classes 0, 1 (n 1990–1177)"."""
    with torch.no_grad():
        curves = weight_net.head_weights(losses.to(next(weight_net.parameters()).dtype))
    heads = weight_net.head_of_class.tolist() or [0] * len(counts)
    named = {}
    for head in range(weight_net.num_heads):
        members = [k for k, h in enumerate(heads) if h == head]
        sizes = [counts[k] for k in members]
        span = f"{max(sizes)}" if min(sizes) == max(sizes) else f"{max(sizes)}–{min(sizes)}"
        named[f"classes {', '.join(map(str, members))} (n {span})"] = curves[:, head].to(losses.dtype)
    return named
