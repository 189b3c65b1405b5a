"""The step under `torch.distributed`: every rank holds shards of one global train batch and one global meta batch.

With world size W > 1 the step equals one process's step on the concatenation of all ranks' shards
(docs/distributed.md): the virtual and the real update use the global weighted gradient, Z is
the global n or Σv, the meta loss is the mean over the global meta batch, each rank computes the sensitivities of
its own samples along the one global direction u, and Θ's gradient is summed over ranks, so every rank keeps the
same classifier, weight net and optimizer states. Communication is bucketed: each reduction is one all-reduce of
a flat buffer, never one per parameter tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mwnet.errors import NonFiniteLossError


class RankFailedError(ValueError):
    """Another rank rejected its batch or hit a non-finite value; this rank changed nothing either."""


class RankDivergedError(RankFailedError, NonFiniteLossError):
    """Another rank met a non-finite loss: the step diverged for every rank (caught as a NonFiniteLossError too)."""


@dataclass
class Traffic:
    """What a rank sent through collectives: their number and bytes (for the docs and the benchmark)."""

    collectives: int = 0
    bytes: int = 0


@dataclass
class Shards:
    """This rank's view of the process group: bucketed sums and broadcasts over all ranks."""

    group: dist.ProcessGroup | None
    world_size: int
    rank: int
    traffic: Traffic = field(default_factory=Traffic)

    def sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Σ over ranks of each tensor, in one all-reduce per dtype (new tensors; the inputs are untouched)."""
        out: list[Tensor | None] = [None] * len(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        for indices in by_dtype.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
            self._collective(flat)
            dist.all_reduce(flat, group=self.group)
            for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
                out[i] = piece.view_as(tensors[i])
        return out  # type: ignore[return-value]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's floating-point buffers (batch-norm running statistics) on every rank, as DDP does."""
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        self._collective(flat)
        dist.broadcast(flat, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
                       group=self.group)
        with torch.no_grad():
            for b, piece in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(piece.view_as(b))

    def agree(self, error: BaseException | None, counts: Sequence[int]) -> list[int]:
        """Every rank learns whether any rank failed, and the global sums of `counts` (batch sizes).

        Raises `error` on the rank that had it and RankFailedError on the others, so that no rank waits in a
        later collective for one that gave up.
        """
        flags = torch.zeros(self.world_size + len(counts), dtype=torch.float64, device=_control_device(self.group))
        # 1: a rejected batch, 2: a non-finite loss (the others then raise RankDivergedError, also a
        # NonFiniteLossError, so that a training loop records the divergence on every rank alike).
        flags[self.rank] = 0.0 if error is None else 2.0 if isinstance(error, NonFiniteLossError) else 1.0
        flags[self.world_size:] = torch.tensor([float(c) for c in counts], dtype=torch.float64)
        (flags,) = self.sum([flags])
        if error is not None:
            raise error
        failed = [(r, int(flags[r])) for r in range(self.world_size) if flags[r] > 0]
        if failed and failed[0][1] == 2:
            raise RankDivergedError("loss on another rank", f"rank {failed[0][0]} of {self.world_size}")
        if failed:
            raise RankFailedError(f"rank {failed[0][0]} of {self.world_size} rejected its step; see its error")
        return [int(c) for c in flags[self.world_size:].tolist()]

    def _collective(self, flat: Tensor) -> None:
        self.traffic.collectives += 1
        self.traffic.bytes += flat.numel() * flat.element_size()


def _control_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where small host-side tensors must live for the group's collectives: NCCL alone has no CPU transport."""
    backend = str(dist.get_backend(group))
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def sum_gradients(params: dict[str, Tensor], loss: Tensor, shards: Shards) -> Tensor:
    """Replace each local .grad by its sum over ranks; returns the global loss (NonFiniteLossError if it is not)."""
    with_grad = [p for p in params.values() if p.grad is not None]
    *grads, total = shards.sum([*(p.grad for p in with_grad), loss.detach()])
    if not torch.isfinite(total):
        raise NonFiniteLossError("weighted training loss", str(float(total)))
    for p, g in zip(with_grad, grads):
        p.grad = g
    return total


def weight_net_gradient(weights: Tensor, theta: list[Tensor], grad: Tensor, normalizer: Tensor, normalize: str,
                        shards: Shards) -> list[Tensor]:
    """∇Θ L = Σ over every rank's samples of ∂L/∂ṽᵢ · ∂ṽᵢ/∂Θ, when ṽ = v / Z and Z (the global Σv or n) is shared.

    For "sum", ∂L/∂vᵢ = gᵢ/Z − G/Z² with G = Σⱼ gⱼvⱼ over all ranks; the local parts A = Σᵢ (gᵢ/Z) ∂vᵢ/∂Θ and
    B = Σᵢ ∂vᵢ/∂Θ travel with the local part of G in one all-reduce, and ∇Θ L = A − (G/Z²) B. (When every v is
    0, Z = 1 and G = 0, so the formula needs no special case.)
    """
    values = weights.detach()
    local = torch.autograd.grad(weights, theta, grad_outputs=grad / normalizer, allow_unused=True,
                                retain_graph=normalize == "sum")
    local = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, local)]
    if normalize == "mean":
        return shards.sum(local)
    spread = torch.autograd.grad(weights, theta, grad_outputs=torch.ones_like(values), allow_unused=True)
    spread = [torch.zeros_like(p) if g is None else g for p, g in zip(theta, spread)]
    *summed, total = shards.sum([*local, *spread, (grad * values).sum()])
    a, b = summed[:len(theta)], summed[len(theta):]
    return [ga - total / normalizer**2 * gb for ga, gb in zip(a, b)]


def current_shards(group: dist.ProcessGroup | None = None, traffic: Traffic | None = None) -> Shards | None:
    """The group's Shards when torch.distributed is initialised with more than one rank, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(group)
    if world < 2:
        return None
    return Shards(group, world, dist.get_rank(group), traffic if traffic is not None else Traffic())


def global_sum(value: Tensor, shards: Shards | None) -> Tensor:
    """`value` summed over ranks (one all-reduce), or `value` itself in one process."""
    return value if shards is None else shards.sum([value])[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (the step reduces gradients itself, bucketed)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_supported(model: nn.Module) -> None:
    """SyncBatchNorm is refused: its statistics all-reduce would run inside the virtual, meta and dual passes
    (which have no forward-mode rule for it) and couple ranks' batches differently from the global step."""
    for name, module in model.named_modules():
        if isinstance(module, nn.SyncBatchNorm):
            raise ValueError(f"{name or 'the model'} is a SyncBatchNorm, which the meta step does not support: "
                             "convert it back to BatchNorm (each rank then normalises with its own batch "
                             "statistics, as plain DDP does)")
