"""Other libraries' Meta-Weight-Net steps: optional yardstick rows of the speed benchmark (higher, torchopt, Betty).

Each peer writes one Meta-Weight-Net iteration with its own library's mechanism, on the same model copy, batches,
classifier SGD and weight net as every other row: virtual step, meta loss, Θ update, weighted real update. Their
packages are never dependencies of mwnet: each is imported only when its row is built, and a row whose package is
missing (or does not import) is skipped with a note saying why (`unavailable`). Nothing here is imported by the
library itself.

higher and torchopt compute the exact hypergradient by a second-order backward, as the official code does; Betty
solves the bi-level problem by implicit differentiation with its default approximation, a different algorithm
(its `semantics` line says how). The tests hold each line to the code (tests/test_bench_peers.py).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mwnet.losses import normalize_weights

Batches = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class PeerStep:
    """A built peer row: `step()` runs one iteration. The optimizers are the ones the peer really steps (Betty
    builds its own from the ones it is given)."""

    step: Callable[[], None]
    optimizer: torch.optim.Optimizer
    weight_optimizer: torch.optim.Optimizer


PeerBuilder = Callable[[nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer, Batches, str], PeerStep]


@dataclass(frozen=True)
class Peer:
    """One peer row: what to import, how to install it, and what its step computes (one line for the report)."""

    method: str
    module: str
    distribution: str
    install: str
    label: str
    hypergradient: str
    semantics: str
    build: PeerBuilder


def _weighted_update(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module, x: Tensor,
                     y: Tensor, normalize: str) -> None:
    """The real update after Θ's step, as the official code writes it: a second forward, weights from the new Θ as
    constants, one step of the classifier's own optimizer."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    with torch.no_grad():
        weights = normalize_weights(weight_net(losses.detach()), normalize)
    optimizer.zero_grad()
    (weights * losses).sum().backward()
    optimizer.step()


def build_higher(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                 weight_optimizer: torch.optim.Optimizer, batches: Batches, normalize: str) -> PeerStep:
    """`higher.innerloop_ctx`: a patched copy of the model and a differentiable copy of the classifier's SGD."""
    import higher

    x, y, x_meta, y_meta = batches
    theta = list(weight_net.parameters())
    # The virtual step is plain SGD at the optimizer's own learning rates: its momentum and weight decay are
    # overridden for the differentiable copy only (the real optimizer keeps them).
    plain_sgd = {"momentum": [0.0], "dampening": [0.0], "weight_decay": [0.0], "nesterov": [False]}

    def step() -> None:
        model.train()
        with higher.innerloop_ctx(model, optimizer, override=plain_sgd) as (fmodel, diffopt):
            losses = F.cross_entropy(fmodel(x), y, reduction="none")
            weights = normalize_weights(weight_net(losses.detach()), normalize)
            diffopt.step((weights * losses).sum())
            meta_loss = F.cross_entropy(fmodel(x_meta), y_meta)
            weight_optimizer.zero_grad()
            meta_loss.backward(inputs=theta)
        weight_optimizer.step()
        _weighted_update(model, optimizer, weight_net, x, y, normalize)

    return PeerStep(step, optimizer, weight_optimizer)


def build_torchopt(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                   weight_optimizer: torch.optim.Optimizer, batches: Batches, normalize: str) -> PeerStep:
    """`torchopt.MetaSGD`: the virtual step replaces the model's parameters by differentiable tensors in place;
    `extract_state_dict` / `recover_state_dict` put the real parameters back (torchopt's own idiom)."""
    import torchopt

    x, y, x_meta, y_meta = batches
    theta = list(weight_net.parameters())
    lrs = {float(group["lr"]) for group in optimizer.param_groups}
    if len(lrs) != 1:
        raise ValueError(f"torchopt.MetaSGD takes one learning rate; the optimizer has {sorted(lrs)}")

    def step() -> None:
        model.train()
        real = torchopt.extract_state_dict(model)  # by reference: the real nn.Parameters, restored below
        virtual_sgd = torchopt.MetaSGD(model, lr=float(optimizer.param_groups[0]["lr"]))
        losses = F.cross_entropy(model(x), y, reduction="none")
        weights = normalize_weights(weight_net(losses.detach()), normalize)
        virtual_sgd.step((weights * losses).sum())  # the model now holds ŵ(Θ)
        meta_loss = F.cross_entropy(model(x_meta), y_meta)
        weight_optimizer.zero_grad()
        meta_loss.backward(inputs=theta)
        weight_optimizer.step()
        torchopt.recover_state_dict(model, real)
        _weighted_update(model, optimizer, weight_net, x, y, normalize)

    return PeerStep(step, optimizer, weight_optimizer)


def build_betty(model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                weight_optimizer: torch.optim.Optimizer, batches: Batches, normalize: str) -> PeerStep:
    """Betty's `ImplicitProblem`s and `Engine`, as its data-reweighting examples set them up: the classifier is the
    lower problem (weighted loss), the weight net the upper one (meta loss), one unrolled step, default `Config`."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    x, y, x_meta, y_meta = batches
    device = next(model.parameters()).device

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            inputs, targets = batch
            losses = F.cross_entropy(self.module(inputs), targets, reduction="none")
            weights = normalize_weights(self.reweight(losses.detach()), normalize)
            return (weights * losses).sum()

        def get_batch(self):
            return x, y

    class Reweight(ImplicitProblem):
        def training_step(self, batch):
            inputs, targets = batch
            return F.cross_entropy(self.classifier(inputs), targets)

        def get_batch(self):
            return x_meta, y_meta

    classifier = Classifier("classifier", Config(type="darts", unroll_steps=1), module=model, optimizer=optimizer)
    reweight = Reweight("reweight", Config(), module=weight_net, optimizer=weight_optimizer)
    engine_config = EngineConfig(strategy="gpu" if device.type == "cuda" else "cpu", logger_type="none")
    from betty.logging.logger_base import get_logger

    get_logger()  # made (at INFO level, on stdout) on first use: made here so that its set-up log can be muted
    with _quiet("betty"):
        engine = Engine(problems=[reweight, classifier], config=engine_config,
                        dependencies={"u2l": {reweight: [classifier]}, "l2u": {classifier: [reweight]}})

    def step() -> None:
        engine.global_step += 1
        engine.train_step()

    # Betty re-creates both optimizers from the given ones' defaults (same class and settings, fresh state).
    return PeerStep(step, classifier.optimizer, reweight.optimizer)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


PEERS: dict[str, Peer] = {peer.method: peer for peer in (
    Peer("higher", "higher", "higher", "pip install higher", "higher (peer, innerloop_ctx)",
         "exact (2nd-order backward)",
         "exact, the official algorithm through `higher.innerloop_ctx`: a functional copy of the model (parameters "
         "and batch-norm buffers cloned every step), its virtual step by a differentiable copy of the classifier's "
         "SGD with momentum and weight decay overridden to 0, a second-order backward into Θ, then a second forward "
         "for the real update; the running statistics move once per step, as in the official code.",
         build_higher),
    Peer("torchopt", "torchopt", "torchopt", "pip install torchopt", "torchopt (peer, MetaSGD)",
         "exact (2nd-order backward)",
         "exact, the official algorithm through `torchopt.MetaSGD`: the virtual step swaps differentiable "
         "parameters into the model itself, a second-order backward into Θ, `recover_state_dict` puts the real "
         "parameters back, then a second forward for the real update; the virtual and meta forwards use the "
         "model's own batch-norm buffers, so its running statistics move three times per step (x, the meta batch, "
         "x again).",
         build_torchopt),
    Peer("betty", "betty", "betty-ml", "pip install --no-deps --ignore-requires-python betty-ml==0.2.1",
         "Betty (peer, a different algorithm)", "approximate (implicit, DARTS)",
         "approximate, a different algorithm: the classifier steps first (weights from the old Θ), then Θ steps on "
         "Betty's default implicit hypergradient (`Config(type=\"darts\")`: inverse Hessian taken as the identity, "
         "the mixed second derivative by a central finite difference of length 0.01 along ∇L_meta), "
         "−∂²L_train/∂Θ∂w · ∇L_meta(w′) at the updated parameters w′: no virtual step, no factor α, and the loss fed "
         "to V is differentiated too (a finite difference does not see its `.detach()`); its four train-mode "
         "forwards (x, the meta batch, x at w′ ± ε∇L_meta) all move the model's running statistics.",
         build_betty),
)}

PEER_METHODS: tuple[str, ...] = tuple(PEERS)


def unavailable(method: str) -> str | None:
    """None when the peer's package imports; else why its row is skipped ("not installed: pip install …")."""
    peer = PEERS[method]
    try:
        with warnings.catch_warnings():  # the peers' own import-time deprecation warnings are not ours to raise
            warnings.simplefilter("ignore")
            importlib.import_module(peer.module)
    except Exception as exc:  # any failure to import makes the row unusable: say which
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == peer.module
        if missing:  # the package itself is absent, not something it imports from torch
            return f"not installed: {peer.install}"
        return f"unusable with torch {torch.__version__}: {type(exc).__name__}: {exc}"
    return None


def version(method: str) -> str:
    """The installed version of the peer's distribution, or "unknown"."""
    try:
        return importlib.metadata.version(PEERS[method].distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_peer(method: str, model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
               weight_optimizer: torch.optim.Optimizer, batches: Batches, normalize: str) -> PeerStep:
    """The step closure of peer `method` (its package must import: check `unavailable` first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PEERS[method].build(model, optimizer, weight_net, weight_optimizer, batches, normalize)
