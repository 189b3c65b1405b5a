"""Batches on the target device: the whole data set as one tensor there, shuffled by the loader's own generator,
uint8 → float / 255, augmented on whole batches with tensor ops (airbench style) and normalised per channel.

`BatchLoader` saves its exact position (permutation, position in it, generator state), so a run resumed
mid-epoch sees the same remaining batches; `MetaSampler` draws meta batches forever, reshuffling every pass. A
`LazyImages` (an image folder too large for memory) is decoded batch by batch on the host and then moved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from mwnet.data.images import LazyImages

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def draw_augmentation(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets (n, 2) in [0, 2·pad] (rows, columns) and horizontal flips (n,) bool with p = 1/2."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) by `pad`, crop H×W at `offsets`, mirror the rows of `flips`; one gather.

    Output pixel (i, j) of sample k is padded[k, :, oy + i, ox + j], or padded[k, :, oy + i, ox + W − 1 − j] when
    flipped: the crop and the flip are a single index computation over the whole batch.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def shard_block(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of n that rank `rank` of `world_size` takes: contiguous blocks in rank order, the
    first n mod world_size blocks one row longer (as `torch.tensor_split`), so that the ranks' blocks concatenated
    in rank order are the batch itself."""
    size, extra = divmod(n, world_size)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (1 if rank < extra else 0)


def _stat_tensor(value: Any, shape: Sequence[int], device: torch.device, name: str) -> torch.Tensor | None:
    """mean/std as a tensor that broadcasts over a batch: (1, C, 1, 1) for images, (1, D) for tables."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1).to(device)
    ndim = len(shape)
    if ndim > 1 and len(t) not in (1, shape[1]):
        raise ValueError(f"{name} has {len(t)} values for {shape[1]} channels/features")
    if ndim == 4:
        return t.view(1, -1, 1, 1)
    return t.view(1, -1) if ndim == 2 else t


class BatchLoader:
    """Shuffled mini-batches (x float32, y int64, idx int64 positions in x) on `device`.

    Args:
        x: uint8 images (N, C, H, W) (scaled by 1/255), float tensors (N, …) used as they are, or a `LazyImages`.
        y: labels (N,).
        batch_size: samples per batch [100]; shuffle: a new permutation each epoch [True]; seed: the loader's own
            generator [0]; device: where batches live [cpu]; augment: reflect-pad 4, random crop, horizontal flip
            [False]; mean, std: per-channel normalisation applied after scaling [None: none]; drop_last: skip a
            last partial batch [False].
        shard: (rank, world_size): yield only this rank's block of each batch (`shard_block`) [None: all of it].
            Every rank draws the same permutation and augmentation from the same seed, so the ranks' blocks
            concatenated are the batch one process would see, and the loader's state is the same on every rank;
            a block left empty (a batch smaller than world_size) is skipped.
    """

    def __init__(self, x: Any, y: Any, batch_size: int = 100, shuffle: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu", augment: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, drop_last: bool = False, pad: int = 4,
                 shard: tuple[int, int] | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.device = torch.device(device)
        self.lazy = not isinstance(x, torch.Tensor)
        self.x = x if self.lazy else x.to(self.device)
        self.y = torch.as_tensor(y, dtype=torch.int64).to(self.device)
        ndim = len(x.shape)
        if augment and ndim != 4:
            raise ValueError(f"augmentation needs images (N, C, H, W), got shape {tuple(x.shape)}")
        if augment and min(x.shape[2:]) <= pad:
            raise ValueError(f"augmentation pads by {pad}: images must be larger than that, got {tuple(x.shape)}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.mean = _stat_tensor(mean, x.shape, self.device, "mean")
        self.std = _stat_tensor(std, x.shape, self.device, "std")
        self.scale = x.dtype == torch.uint8
        self.batch_size, self.shuffle, self.augment, self.drop_last, self.pad = batch_size, shuffle, augment, \
            drop_last, pad
        self.generator = torch.Generator().manual_seed(int(seed))  # on the host: same numbers on every device
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        self.shard = shard
        self.epoch = 0  # completed epochs
        self._perm: torch.Tensor | None = None  # the permutation of the epoch in progress
        self._pos = 0  # samples of it already handed out

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the epoch in progress (after a `load_state_dict` or an interrupted loop), else a new one."""
        n = len(self.y)
        if self._perm is None:
            self._perm = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            self._pos = 0
        end = n - n % self.batch_size if self.drop_last else n
        while self._pos < end:
            idx = self._perm[self._pos: self._pos + self.batch_size]
            self._pos += len(idx)  # counted before yielding: a checkpoint taken on this batch resumes after it
            batch = self._batch(idx)
            if len(batch[1]):
                yield batch
        self._perm, self._pos = None, 0
        self.epoch += 1

    def _batch(self, idx: torch.Tensor) -> Batch:
        # The whole batch's augmentation is drawn on every rank, so the generator stays the same everywhere.
        drawn = draw_augmentation(len(idx), self.generator, self.pad) if self.augment else None
        if self.shard is not None:
            lo, hi = shard_block(len(idx), *self.shard)
            idx = idx[lo:hi]
            drawn = None if drawn is None else (drawn[0][lo:hi], drawn[1][lo:hi])
        idx_dev = idx.to(self.device)
        xb = self.x[idx].to(self.device, non_blocking=True) if self.lazy else self.x[idx_dev]
        xb = xb.float()
        if self.scale:
            xb = xb.mul_(1.0 / 255.0)
        if drawn is not None:
            xb = crop_flip(xb, drawn[0], drawn[1], self.pad)
        if self.mean is not None:
            xb = (xb - self.mean) / self.std
        return xb, self.y[idx_dev], idx_dev

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: epoch, position, permutation, generator state."""
        return {"epoch": self.epoch, "position": self._pos, "size": len(self.y),
                "permutation": None if self._perm is None else self._perm.clone(),
                "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != len(self.y):
            raise ValueError(f"loader state is for {state['size']} samples, this loader has {len(self.y)}")
        self.epoch = int(state["epoch"])
        self._pos = int(state["position"])
        perm = state["permutation"]
        self._perm = None if perm is None else torch.as_tensor(perm, dtype=torch.int64).cpu().clone()
        self.generator.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8).cpu())


class MetaSampler:
    """Meta batches (x, y) without end: shuffled passes over the meta set, a new permutation each pass.

    The meta set is given as tensors `x` (N, …) and labels `y` (N,) (same arguments as `BatchLoader`; a last
    partial batch of a pass is kept, as the official loader does), or as your own data with `y` left out:

    * a map-style `torch.utils.data.Dataset` of (x, y, …) samples: batches of `batch_size` drawn by this sampler's
      own seeded permutation and collated with `default_collate` (the Dataset applies its own transforms), so
      `state_dict` resumes at the exact batch;
    * a `torch.utils.data.DataLoader` yielding (x, y, …) batches: iterated again whenever it ends (it reshuffles
      if it shuffles); its position is not saved, so `state_dict` holds only the passes completed.

    Batches go to `device`; x may be a tensor or a tuple/list of tensors (a model with several inputs).
    """

    def __init__(self, x: Any, y: Any = None, batch_size: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu", augment: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, shard: tuple[int, int] | None = None) -> None:
        self.device = torch.device(device)
        self.source: Any = None  # the user's Dataset or DataLoader; None for tensors
        self.passes = 0
        self._iter: Iterator[Any] | None = None
        if isinstance(x, (DataLoader, Dataset)) and not isinstance(x, LazyImages):
            what = type(x).__name__
            if y is not None:
                raise ValueError(f"y must be left out when the meta set is a {what}: its samples hold the labels")
            if augment or mean is not None or std is not None:
                raise ValueError(f"augment, mean and std apply to tensors; a {what} applies its own transforms")
            try:
                size = len(x)
            except TypeError:
                raise ValueError(f"a meta {what} must have a length (a map-style Dataset, or a DataLoader of "
                                 f"one)") from None
            if size == 0:
                raise ValueError("the meta set is empty")
            self.source = x
            n = len(x) if isinstance(x, Dataset) else 0
            # For a Dataset, a BatchLoader over positions gives the shuffling and its exact, resumable state.
            if shard is not None and isinstance(x, DataLoader):
                raise ValueError("a meta DataLoader cannot be sharded over ranks: pass its Dataset")
            self.loader = None if isinstance(x, DataLoader) else BatchLoader(
                torch.arange(n), torch.zeros(n), batch_size=batch_size, shuffle=True, seed=seed, shard=shard)
            return
        if y is None:
            raise ValueError("give the meta labels y with tensor inputs x (or pass a Dataset or DataLoader of "
                             "(x, y) samples)")
        if len(y) == 0:
            raise ValueError("the meta set is empty")
        self.loader = BatchLoader(x, y, batch_size=batch_size, shuffle=True, seed=seed, device=device,
                                  augment=augment, mean=mean, std=std, shard=shard)

    def next(self) -> tuple[Any, torch.Tensor]:
        """The next meta batch (x, y)."""
        for _ in range(2):  # a pass that has ended starts the next one; an empty pass twice is an error
            if self._iter is None:
                self._iter = iter(self.loader if self.loader is not None else self.source)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.passes += 1
                continue
            if self.source is None:
                return batch[0], batch[1]
            if isinstance(self.source, Dataset):
                batch = default_collate([self.source[int(i)] for i in batch[2]])
            return self._to_device(batch)
        raise ValueError("the meta DataLoader yields no batch")

    __next__ = next

    def __iter__(self) -> MetaSampler:
        return self

    def _to_device(self, batch: Any) -> tuple[Any, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"meta samples must be (x, y) or (x, y, ...), got a {type(batch).__name__}")
        x, y = batch[0], batch[1]
        x = tuple(t.to(self.device) for t in x) if isinstance(x, (tuple, list)) else x.to(self.device)
        return x, torch.as_tensor(y).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        if isinstance(self.source, DataLoader):
            return {"passes": self.passes}
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.source, DataLoader):
            self.passes = int(state["passes"])
        else:
            self.loader.load_state_dict(state)
        self._iter = None
