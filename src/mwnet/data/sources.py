"""Data sets by name: Fashion-MNIST, MNIST (IDX), CIFAR-10/100 (the python pickles), scikit-learn's digits, an image
folder (one sub-folder per class, optional noisy-labels CSV: the Clothing1M layout) and a `.npz` of arrays.

`load_dataset(name)` returns a `Dataset`: images as uint8 (N, C, H, W) tensors (or a `LazyImages` that decodes from
disk on indexing, for folders too large for memory), tables as float32 (N, D), labels as int64.

One module per format: `idx` (Fashion-MNIST, MNIST), `cifar`, `folder`, `arrays`; `download` finds the files (the
search path) and fetches missing ones (mirrors, md5 checks); `dataset` holds the `Dataset` record.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mwnet.data.arrays import load_arrays
from mwnet.data.cifar import CIFAR_LAYOUTS, load_cifar
from mwnet.data.dataset import Dataset, channel_stats, holdout_split
from mwnet.data.download import search_dirs
from mwnet.data.folder import DEFAULT_MAX_MEMORY_BYTES, load_folder
from mwnet.data.idx import IDX_FILES, load_idx_dataset
from mwnet.data.images import LazyImages, take

# Also re-exported: names that other modules import from here (cli/info.py, splits.py, tests/test_cli_data.py)
# or found here before the formats had modules of their own.
__all__ = ["BUILTIN", "IDX_FILES", "Dataset", "LazyImages", "list_datasets", "load_dataset", "load_digits",
           "search_dirs", "take"]

BUILTIN = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100"}


def list_datasets() -> list[str]:
    """The built-in names; `folder:PATH` and `arrays:PATH` name a user's data."""
    return [*BUILTIN, "folder:PATH", "arrays:PATH"]


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True, verify: bool = True,
                 image_size: int | tuple[int, int] | None = None, labels_csv: str | os.PathLike | None = None,
                 trusted_csv: str | os.PathLike | None = None,
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> Dataset:
    """Load a data set by name: fashion-mnist, mnist, cifar10, cifar100, digits, folder:PATH or arrays:PATH.

    Args:
        data_dir: searched first, and where downloads go [$MWNET_DATA, else ~/.cache/mwnet].
        download: fetch missing official files from the official mirrors [True].
        verify: check every file against its official md5 [True].
        image_size: folder images are resized to this (int or (H, W)) [the first training image's size].
        labels_csv: folder training labels as `path,label[,trusted]` rows [PATH/noisy_labels.csv when present].
        trusted_csv: folder only: a file naming the training images whose label was verified (one path a row).
        max_memory_bytes: folders larger than this once decoded are streamed from disk [2 GiB].
    """
    text = str(name).strip()
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in ("folder", "arrays"):
        if not rest.strip():
            raise ValueError(f"{kind.lower()}: needs a path, e.g. {kind.lower()}:/data/mine")
        path = Path(rest.strip()).expanduser()
        if kind.lower() == "arrays":
            return load_arrays(path)
        return load_folder(path, image_size=image_size, labels_csv=labels_csv, trusted_csv=trusted_csv,
                           max_memory_bytes=max_memory_bytes)
    key = _ALIASES.get(text.lower(), text.lower())
    if key in ("fashion-mnist", "mnist"):
        return load_idx_dataset(key, data_dir=data_dir, download=download, verify=verify)
    if key in CIFAR_LAYOUTS:
        return load_cifar(key, data_dir=data_dir, download=download, verify=verify)
    if key == "digits":
        return load_digits()
    raise ValueError(f"unknown data set {text!r} (choose from {', '.join(list_datasets())})")


def load_digits() -> Dataset:
    """scikit-learn's bundled 8×8 digits as uint8 images (1, 8, 8); a fixed (seed 0) 1437/360 train/test split.

    The 17 grey levels 0..16 are scaled to 0..255 so the images go through the same uint8 path as the others.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train, test = holdout_split(len(y))
    mean, std = channel_stats(x[train])
    return Dataset("digits", [str(i) for i in range(10)], x[train], y[train], x[test], y[test], mean, std,
                   source="sklearn.datasets.load_digits", labels_verified=True, train_ids=train.numpy())
