"""The timed steps: one closure per method, each over its own copy of the same model and weight net.

Plain CE is an ordinary SGD step; the official algorithm is `mwnet.reference.official_step` (the tests' reference
too); every mwnet row is the public `MetaReweighter.step`; the peer rows (higher, torchopt, Betty) are built by
mwnet.bench.peers with their own libraries. Nothing here is a re-enactment of the library's step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.bench.peers import PEER_METHODS, PEERS, build_peer
from mwnet.core import MetaReweighter
from mwnet.precision import autocast, full_precision
from mwnet.reference import official_step
from mwnet.weighting import MetaWeightNet

# The rows of every table, in order. "interval" is meta_interval=k with the default (forward) hypergradient;
# "last-layer-interval" combines the two fast modes (last-layer hypergradient every k-th step); "forward-full-dual"
# is the default mode with tangent_only=False (the dual pass recomputes every primal), to show what reuse saves.
METHODS: tuple[str, ...] = ("ce", "official", "forward", "forward-full-dual", "double-backward", "finite-difference",
                            "last-layer", "interval", "last-layer-interval")
# Every row the benchmark knows: the above, then the peers' optional rows (skipped when their package is missing).
ALL_METHODS: tuple[str, ...] = METHODS + PEER_METHODS
_MWNET_MODES = ("forward", "double-backward", "finite-difference", "last-layer")

# Optimiser settings of the official noisy-label scripts (PAPER.md): the same for every method.
CLASSIFIER_SGD = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
WEIGHT_NET_SGD = {"lr": 1e-3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
WEIGHT_NET_HIDDEN = 100

# Every meta row divides the weighted loss by n, as the official noisy-label scripts do; stated, not inherited
# from MetaReweighter's default, so that the yardstick and the mwnet rows always normalise alike.
NORMALIZE = "mean"


def method_label(method: str, interval: int = 5) -> str:
    """The row name of `method` in the tables."""
    if method in PEERS:
        return PEERS[method].label
    labels = {
        "ce": "plain CE training",
        "official": "official algorithm (yardstick)",
        "forward": "mwnet forward (default)",
        "forward-full-dual": "mwnet forward, full dual pass",
        "double-backward": "mwnet double-backward",
        "finite-difference": "mwnet finite-difference",
        "last-layer": "mwnet last-layer",
        "interval": f"mwnet meta_interval={interval} (forward)",
        "last-layer-interval": f"mwnet last-layer, meta_interval={interval}",
    }
    return labels[method]


def method_kind(method: str) -> str:
    """What hypergradient the method computes: the column that keeps fast rows from passing as exact ones."""
    if method in PEERS:
        return PEERS[method].hypergradient
    return {"ce": "none", "official": "exact (2nd-order backward)", "forward": "exact (forward-mode)",
            "forward-full-dual": "exact (forward-mode)", "double-backward": "exact (2nd-order backward)",
            "finite-difference": "approximate", "last-layer": "approximate (last layer)",
            "interval": "exact, every k-th step", "last-layer-interval": "approximate, every k-th step"}[method]


def describe_sgd(settings: dict[str, float | bool]) -> str:
    """'lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4' for one of the SGD settings above."""
    parts = [f"lr {_short(settings['lr'])}", f"momentum {_short(settings['momentum'])}"]
    if settings.get("nesterov"):
        parts.append("Nesterov")
    parts.append(f"weight decay {_short(settings['weight_decay'])}")
    return ", ".join(parts)


def _short(value: float) -> str:
    """0.1 → '0.1', 0.001 → '1e-3', 0.0005 → '5e-4': how the papers and PAPER.md write small rates."""
    if value == 0 or abs(value) >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass
class Runner:
    """One method ready to time: `step()` performs `calls` training iterations (k for the interval row)."""

    method: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    weight_net: nn.Module | None
    weight_optimizer: torch.optim.Optimizer | None
    step: Callable[[], None]
    calls: int = 1
    reweighter: MetaReweighter | None = None


def build_runners(model: nn.Module, batches: tuple[Tensor, Tensor, Tensor, Tensor], *,
                  methods: Sequence[str] = METHODS, interval: int = 5, seed: int = 0,
                  precision: str = "fp32") -> dict[str, Runner]:
    """A runner per method, each with a deep copy of `model`, its own optimizers and the same weight net.

    A peer method's package must import (`mwnet.bench.peers.unavailable` says whether it does). With `precision`
    "bf16" or "fp16" the mwnet rows pass it to `MetaReweighter`, CE runs its forward under autocast (with a
    GradScaler for fp16), and the official and peer rows, which have no such option, run their whole step under
    autocast (no loss scaling).
    """
    x, y, x_meta, y_meta = batches
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        weight_net = MetaWeightNet(hidden=WEIGHT_NET_HIDDEN).to(device=device, dtype=dtype)
    runners: dict[str, Runner] = {}
    for method in methods:
        net = copy.deepcopy(model).train()
        opt = torch.optim.SGD(net.parameters(), **CLASSIFIER_SGD)
        if method == "ce":
            scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

            def ce_step(net=net, opt=opt, scaler=scaler) -> None:
                with autocast(precision, device):
                    logits = net(x)
                loss = F.cross_entropy(full_precision(logits), y)
                opt.zero_grad()
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()

            runners[method] = Runner(method, net, opt, None, None, ce_step)
            continue
        wnet = copy.deepcopy(weight_net)
        wopt = torch.optim.SGD(wnet.parameters(), **WEIGHT_NET_SGD)
        if method == "official":
            def yardstick(net=net, opt=opt, wnet=wnet, wopt=wopt) -> None:
                official_step(net, opt, wnet, wopt, x, y, x_meta, y_meta, normalize=NORMALIZE)

            runners[method] = Runner(method, net, opt, wnet, wopt, _under_autocast(yardstick, precision, device))
            continue
        if method in PEERS:
            peer = build_peer(method, net, opt, wnet, wopt, batches, NORMALIZE)
            runners[method] = Runner(method, net, peer.optimizer, wnet, peer.weight_optimizer,
                                     _under_autocast(peer.step, precision, device))
            continue
        mode = {"interval": "forward", "last-layer-interval": "last-layer", "forward-full-dual": "forward"}.get(
            method, method)
        if mode not in _MWNET_MODES:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
        periodic = method in ("interval", "last-layer-interval")
        rw = MetaReweighter(net, opt, wnet, wopt, normalize=NORMALIZE, hypergradient=mode,
                            meta_interval=interval if periodic else 1, precision=precision,
                            tangent_only=method != "forward-full-dual")

        def mwnet_step(rw=rw) -> None:
            rw.step(x, y, x_meta, y_meta)

        calls = interval if periodic else 1
        runners[method] = Runner(method, net, opt, wnet, wopt, _repeat(mwnet_step, calls), calls, rw)
    return runners


def _under_autocast(fn: Callable[[], None], precision: str, device: torch.device) -> Callable[[], None]:
    if precision == "fp32":
        return fn

    def autocast_step() -> None:
        with autocast(precision, device):
            fn()

    return autocast_step


def _repeat(fn: Callable[[], None], times: int) -> Callable[[], None]:
    if times == 1:
        return fn

    def repeated() -> None:
        for _ in range(times):
            fn()

    return repeated


def random_batches(in_channels: int, side: int, batch_size: int, meta_batch_size: int, *, num_classes: int = 10,
                   seed: int = 0, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A fixed random train batch and meta batch (standard-normal images, uniform labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_channels, side, side, generator=g, dtype=dtype)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    xm = torch.randn(meta_batch_size, in_channels, side, side, generator=g, dtype=dtype)
    ym = torch.randint(0, num_classes, (meta_batch_size,), generator=g)
    return tuple(t.to(device) for t in (x, y, xm, ym))  # type: ignore[return-value]
