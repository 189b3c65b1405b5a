"""folder:PATH: an image folder with one sub-folder per class, decoded by Pillow, with an optional noisy-labels CSV
(the Clothing1M layout); `LazyImages` decodes from disk on indexing, for folders too large for memory.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import Dataset, channel_stats, holdout_split, one_line

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
DEFAULT_MAX_MEMORY_BYTES = 2 << 30  # folders whose decoded images exceed this are streamed from disk


def _decode(path: str, size: tuple[int, int], mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot decode image ({one_line(exc)}): {path}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class LazyImages:
    """Images decoded from disk when indexed: `len(x)`, `x.shape`, `x[LongTensor]` → uint8 (n, C, H, W).

    For image folders too large to hold decoded in memory; every image is converted to one mode ("L" or "RGB")
    and resized to one size.
    """

    dtype = torch.uint8

    def __init__(self, paths: Sequence[str], size: tuple[int, int], mode: str, *, workers: int | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode
        self.workers = workers or min(8, os.cpu_count() or 1)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 1 if self.mode == "L" else 3, *self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def _indices(self, index: Any) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self.paths)))[index]
        return [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return torch.from_numpy(_decode(self.paths[int(index)], self.size, self.mode))
        paths = [self.paths[i] for i in self._indices(index)]
        return self.decode(paths)

    def decode(self, paths: Sequence[str]) -> torch.Tensor:
        out = torch.empty((len(paths), *self.shape[1:]), dtype=torch.uint8)
        if len(paths) <= 8 or self.workers <= 1:
            for i, p in enumerate(paths):
                out[i] = torch.from_numpy(_decode(p, self.size, self.mode))
            return out
        with ThreadPoolExecutor(self.workers) as pool:  # Pillow releases the GIL while decoding
            for i, array in enumerate(pool.map(lambda p: _decode(p, self.size, self.mode), paths)):
                out[i] = torch.from_numpy(array)
        return out

    def subset(self, index: Any) -> LazyImages:
        """A view on some of the images (no decoding)."""
        return LazyImages([self.paths[i] for i in self._indices(index)], self.size, self.mode, workers=self.workers)

    def load(self) -> torch.Tensor:
        """Every image, decoded into one uint8 tensor."""
        return self.decode(self.paths)


def take(x: Any, index: torch.Tensor) -> Any:
    """x[index] for tensors; a lazy view (nothing decoded) for `LazyImages`."""
    if isinstance(x, LazyImages):
        return x.subset(index)
    return x[index]


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_tree(root: Path, classes: list[str], *, ignore: Sequence[str] = ()) -> tuple[list[str], list[int]]:
    """Image files under root/<class>/ (any depth), sorted, with their class indices; `ignore` skips folders."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name in _class_folders(root):
        if name in ignore:
            continue
        if name not in index:
            raise ValueError(f"class folder {name!r} is not among the training classes: {root / name}")
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += [str(p) for p in files]
        labels += [index[name]] * len(files)
    return paths, labels


def _read_labels_csv(csv_path: Path, base: Path, classes: list[str] | None) -> tuple[list[str], list[int]]:
    """`path,label` rows (an optional header); labels are class indices or class-folder names."""
    by_name = {c: i for i, c in enumerate(classes or [])}
    paths, labels = [], []
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels CSV is not text ({exc.reason}): {csv_path}") from None
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            raise ValueError(f"expected 'path,label' at {csv_path}:{line}, got {','.join(row)!r}")
        text = row[1].strip()
        if text in by_name:
            label = by_name[text]
        else:
            try:
                label = int(text)
            except ValueError:
                if line == 1 and not paths:
                    continue  # a header row
                raise ValueError(f"label {text!r} is neither a class index nor a class name at {csv_path}:{line}")\
                    from None
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = len(classes) if classes is not None else "K"
            raise ValueError(f"label {label} out of range [0, {limit}) at {csv_path}:{line}")
        path = Path(row[0].strip())
        paths.append(str(path if path.is_absolute() else base / path))
        labels.append(label)
    if not paths:
        raise ValueError(f"labels CSV has no rows: {csv_path}")
    return paths, labels


def _true_folder_labels(paths: Sequence[str], train_root: Path, classes: list[str]) -> list[int] | None:
    """Class of each path from the class folder it sits in under train_root, or None if any lies elsewhere."""
    index = {c: i for i, c in enumerate(classes)}
    root = train_root.resolve()
    truth = []
    for p in paths:
        try:
            parts = Path(p).resolve().relative_to(root).parts
        except ValueError:
            return None
        if len(parts) < 2 or parts[0] not in index:
            return None
        truth.append(index[parts[0]])
    return truth


def load_folder(path: Path, *, image_size: int | tuple[int, int] | None = None,
                labels_csv: str | os.PathLike | None = None,
                max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> Dataset:
    """An image folder: PATH/<class>/… or PATH/train/<class>/… with optional PATH/test/ and PATH/meta/ (or val/).

    Training labels come from PATH/noisy_labels.csv (or `labels_csv`) when present: `path,label` rows, paths
    relative to PATH; if every listed image sits in a class folder, that folder is kept as the true label. The
    meta set (PATH/meta or PATH/val) is taken as clean. Without a test folder, a fixed 20 % of the training
    images (seed 0) is held out as the test set.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    train_root = root / "train" if (root / "train").is_dir() else root
    ignore = ("test", "meta", "val") if train_root == root else ()  # split folders beside the class folders
    classes = [c for c in _class_folders(train_root) if c not in ignore]
    csv_path = Path(labels_csv) if labels_csv is not None else root / "noisy_labels.csv"
    if labels_csv is not None and not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    truth: list[int] | None = None
    if csv_path.is_file():
        paths, labels = _read_labels_csv(csv_path, root, classes or None)
        if not classes:
            classes = [str(i) for i in range(max(labels) + 1)]
        truth = _true_folder_labels(paths, train_root, classes)
    else:
        if not classes:
            raise ValueError(f"no class sub-folders (one per class) in image folder: {train_root}")
        paths, labels = _scan_tree(train_root, classes, ignore=ignore)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in image folder: {train_root}")
    size, mode = _image_geometry(paths[0], image_size)

    sets: dict[str, tuple[list[str], list[int]]] = {"train": (paths, labels)}
    for split, names in (("test", ("test",)), ("meta", ("meta", "val"))):
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is not None:
            sets[split] = _scan_tree(folder, classes)
    channels = 1 if mode == "L" else 3
    total_bytes = sum(len(p) for p, _ in sets.values()) * channels * size[0] * size[1]
    lazy = total_bytes > max_memory_bytes

    def images(paths: list[str]) -> Any:
        x = LazyImages(paths, size, mode)
        return x if lazy else x.load()

    y_train = torch.tensor(labels, dtype=torch.int64)
    y_true = torch.tensor(truth, dtype=torch.int64) if truth is not None else None
    x_train = images(paths)
    if "test" in sets:
        x_test, y_test = images(sets["test"][0]), torch.tensor(sets["test"][1], dtype=torch.int64)
    else:
        train_idx, test_idx = holdout_split(len(paths))
        x_test = take(x_train, test_idx)
        y_test = (y_true if y_true is not None else y_train)[test_idx]
        x_train, y_train = take(x_train, train_idx), y_train[train_idx]
        y_true = y_true[train_idx] if y_true is not None else None
    x_meta = y_meta = None
    if "meta" in sets:
        x_meta, y_meta = images(sets["meta"][0]), torch.tensor(sets["meta"][1], dtype=torch.int64)
    sample = x_train if not lazy else x_train[torch.linspace(0, len(x_train) - 1, min(len(x_train), 1000)).long()]
    mean, std = channel_stats(sample)
    return Dataset(f"folder:{root}", classes, x_train, y_train, x_test, y_test, mean, std, x_meta, y_meta, y_true,
                   source=str(root))


def _image_geometry(first: str, image_size: int | tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    from PIL import Image

    try:
        with Image.open(first) as image:
            mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            native = (image.size[1], image.size[0])
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {first}") from None
    except OSError as exc:
        raise ValueError(f"cannot decode image ({one_line(exc)}): {first}") from None
    if image_size is None:
        return native, mode
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return (int(size[0]), int(size[1])), mode
