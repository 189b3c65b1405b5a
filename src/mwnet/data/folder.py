"""folder:PATH: an image folder, one sub-folder per class, or any images with a labels CSV (the Clothing1M layout).

    PATH/
      noisy_labels.csv     optional: path,label[,trusted] rows, paths relative to PATH (or give labels_csv)
      train/<class>/…      the training images (or PATH/<class>/… directly)
      test/<class>/…       optional test set (else a fixed 20 % of the training images, seed 0)
      meta/<class>/…       optional trusted meta set (or val/)

With a CSV, the sub-folders of train/ (or PATH) are the classes only when there are at least two and every listed
image lies in one of them; then each image's folder is its true label. Otherwise (e.g. all images under one
`images/` folder) the classes are the CSV's labels: class indices 0…K−1, or names (sorted).
Every CSV path must stay inside PATH, name an image once, and not lie in test/ or meta/.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import Dataset, channel_stats, check_num_classes, holdout_split
from mwnet.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    LazyImages,
    image_geometry,
    take,
)

__all__ = ["DEFAULT_MAX_MEMORY_BYTES", "IMAGE_EXTENSIONS", "LABELS_CSV", "LazyImages", "load_folder", "take"]

DEFAULT_MAX_MEMORY_BYTES = 2 << 30  # folders whose decoded images exceed this are streamed from disk
LABELS_CSV = "noisy_labels.csv"
_SPLIT_FOLDERS = {"test": ("test",), "meta": ("meta", "val")}
_TRUE, _FALSE = frozenset({"1", "true", "yes", "y"}), frozenset({"0", "false", "no", "n", ""})


@dataclass
class _CsvRows:
    """The rows of a labels CSV: paths relative to the folder, label texts, CSV line numbers, trusted flags."""

    paths: list[str]
    labels: list[str]
    lines: list[int]
    trusted: list[bool] | None


def load_folder(path: Path, *, image_size: int | tuple[int, int] | None = None,
                labels_csv: str | os.PathLike | None = None, trusted_csv: str | os.PathLike | None = None,
                max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
                max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Dataset:
    """An image folder (layout in the module docstring).

    Args:
        image_size: every image is resized to this (int or (H, W)) [the first training image's size].
        labels_csv: the training labels, `path,label` rows (optional header; a header column `trusted` of 1/0
            marks rows whose label was verified) [PATH/noisy_labels.csv when present, else the class folders].
        trusted_csv: a file naming training images whose label was verified, one path per row (first column).
        max_memory_bytes: folders larger than this once decoded are streamed from disk [2 GiB].
        max_image_pixels: the most pixels one image file may declare [8192 × 8192].
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    train_root = root / "train" if (root / "train").is_dir() else root
    prefix = () if train_root == root else ("train",)
    skip = {n for names in _SPLIT_FOLDERS.values() for n in names} if not prefix else set()
    folders = [c for c in _class_folders(train_root) if c not in skip]
    csv_path = Path(labels_csv) if labels_csv is not None else root / LABELS_CSV
    if labels_csv is not None and not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    truth: list[int] | None = None
    trusted: list[bool] | None = None
    lines: list[int] | None = None
    if csv_path.is_file():
        rows = _read_labels_csv(csv_path, root)
        parts = [PurePosixPath(p).parts for p in rows.paths]
        n = len(prefix)
        in_folders = len(folders) >= 2 and all(len(q) > n + 1 and q[:n] == prefix and q[n] in folders for q in parts)
        classes = folders if in_folders else _csv_classes(rows, csv_path)
        labels = _csv_labels(rows, classes, csv_path)
        if in_folders:
            index = {c: i for i, c in enumerate(classes)}
            truth = [index[q[n]] for q in parts]
        paths, trusted, lines = rows.paths, rows.trusted, rows.lines
    else:
        if len(folders) < 2:
            what = f"only one class sub-folder ({folders[0]!r})" if folders else "no class sub-folders"
            raise ValueError(f"{what} and no labels CSV ({LABELS_CSV}) in image folder (a classifier needs one "
                             f"sub-folder per class, at least two): {train_root}")
        classes = folders
        paths, labels = _class_labels(_scan_tree(root, train_root, skip), classes, train_root)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in image folder: {train_root}")

    sets: dict[str, tuple[list[str], list[int], str]] = {}
    for split, names in _SPLIT_FOLDERS.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is not None:
            found = _scan_tree(root, folder)
            _check_disjoint(paths, lines, csv_path, {p for p, _ in found}, folder.name)
            sets[split] = (*_class_labels(found, classes, folder), folder.name)
    trusted_source = ""
    if trusted is not None:
        trusted_source = f"the trusted column of {csv_path}"
    if trusted_csv is not None:
        marked = _read_trusted_csv(Path(trusted_csv), root, paths)
        trusted = [a or b for a, b in zip(trusted or [False] * len(paths), marked)]
        trusted_source = " and ".join(s for s in (trusted_source, f"the rows named in {trusted_csv}") if s)
    elif truth is not None and trusted is None:
        trusted_source = f"the images whose CSV label agrees with their class folder in {train_root}"

    files = [str(root / p) for p in paths]
    size, mode = image_geometry(files[0], image_size, max_pixels=max_image_pixels)
    channels = 1 if mode == "L" else 3
    total_bytes = (len(paths) + sum(len(s[0]) for s in sets.values())) * channels * size[0] * size[1]
    lazy = total_bytes > max_memory_bytes

    def images(rel: list[str]) -> Any:
        x = LazyImages([str(root / p) for p in rel], size, mode, max_pixels=max_image_pixels)
        return x if lazy else x.load()

    y_train = torch.tensor(labels, dtype=torch.int64)
    y_true = torch.tensor(truth, dtype=torch.int64) if truth is not None else None
    mask = torch.tensor(trusted, dtype=torch.bool) if trusted is not None else None
    ids = np.array(paths, dtype=object)
    x_train = images(paths)
    if "test" in sets:
        x_test, y_test = images(sets["test"][0]), torch.tensor(sets["test"][1], dtype=torch.int64)
    else:
        train_idx, test_idx = holdout_split(len(paths))
        x_test = take(x_train, test_idx)
        y_test = (y_true if y_true is not None else y_train)[test_idx]
        x_train, y_train, ids = take(x_train, train_idx), y_train[train_idx], ids[train_idx.numpy()]
        y_true = y_true[train_idx] if y_true is not None else None
        mask = mask[train_idx] if mask is not None else None
    x_meta = y_meta = meta_ids = None
    if "meta" in sets:
        x_meta, y_meta = images(sets["meta"][0]), torch.tensor(sets["meta"][1], dtype=torch.int64)
        meta_ids = np.array(sets["meta"][0], dtype=object)
    sample = x_train if not lazy else x_train[torch.linspace(0, len(x_train) - 1, min(len(x_train), 1000)).long()]
    mean, std = channel_stats(sample)
    return Dataset(f"folder:{root}", classes, x_train, y_train, x_test, y_test, mean, std, x_meta, y_meta, y_true,
                   source=str(root), trusted=mask, trusted_source=trusted_source,
                   meta_source=f"{sets['meta'][2]}/ folder of {root}" if "meta" in sets else "", train_ids=ids,
                   meta_ids=meta_ids)


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_tree(root: Path, folder: Path, skip: set[str] | None = None) -> list[tuple[str, str]]:
    """(path relative to root, class folder) of the image files under folder/<class>/ (any depth), sorted."""
    found = []
    for name in _class_folders(folder):
        if not (skip and name in skip):
            files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            found += [(p.relative_to(root).as_posix(), name) for p in files if p.is_file()]
    return found


def _class_labels(found: list[tuple[str, str]], classes: list[str], folder: Path) -> tuple[list[str], list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    for _, name in found:
        if name not in index:
            raise ValueError(f"class folder {name!r} is not among the training classes: {folder / name}")
    return [p for p, _ in found], [index[name] for _, name in found]


def _inside(text: str, where: str) -> str:
    """`text` as a normalised path relative to the folder; ValueError when it is absolute or leaves the folder."""
    path = text.strip()
    normal = posixpath.normpath(path) if path else ""
    if not path or os.path.isabs(path) or normal in (".", "..") or normal.startswith("../"):
        raise ValueError(f"path {path!r} is not inside the data set folder (paths are relative to it) at {where}")
    return normal


def _csv_rows(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty rows; one-line ValueErrors for text that is not a CSV."""
    line = 0
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                line = reader.line_num
                if row and "".join(row).strip():
                    yield line, row
    except UnicodeDecodeError as exc:
        raise ValueError(f"CSV is not UTF-8 text ({exc.reason}): {csv_path}") from None
    except csv.Error as exc:
        raise ValueError(f"malformed CSV ({exc}) at {csv_path}:{line + 1}") from None


def _is_header(path: str, label: str, root: Path) -> bool:
    """A first row is a header when its label is no class index and its path names no image file."""
    try:
        int(label)
        return False
    except ValueError:
        pass
    return PurePosixPath(path.strip()).suffix.lower() not in IMAGE_EXTENSIONS and not (root / path.strip()).is_file()


def _read_labels_csv(csv_path: Path, root: Path) -> _CsvRows:
    """`path,label[,trusted]` rows (an optional header, which may name the columns path, label, trusted)."""
    rows = _CsvRows([], [], [], None)
    columns: tuple[int, int, int | None] = (0, 1, None)
    seen: dict[str, int] = {}
    first = True
    for line, row in _csv_rows(csv_path):
        if first and len(row) >= 2 and _is_header(row[0], row[1], root):
            names = [c.strip().lower() for c in row]
            columns = (names.index("path") if "path" in names else 0, names.index("label") if "label" in names else 1,
                       names.index("trusted") if "trusted" in names else None)
            rows.trusted = [] if columns[2] is not None else None
            first = False
            continue
        first = False
        p, lab, tru = columns
        if len(row) <= max(p, lab, tru or 0) or not row[p].strip():
            raise ValueError(f"expected 'path,label' at {csv_path}:{line}, got {','.join(row)!r}")
        rel = _inside(row[p], f"{csv_path}:{line}")
        if rel in seen:
            raise ValueError(f"{rel} is listed twice, at {csv_path}:{seen[rel]} and line {line}")
        seen[rel] = line
        rows.paths.append(rel)
        rows.labels.append(row[lab].strip())
        rows.lines.append(line)
        if rows.trusted is not None and tru is not None:
            flag = row[tru].strip().lower()
            if flag not in _TRUE | _FALSE:
                raise ValueError(f"trusted must be 1 or 0, got {row[tru].strip()!r} at {csv_path}:{line}")
            rows.trusted.append(flag in _TRUE)
    if not rows.paths:
        raise ValueError(f"labels CSV has no rows: {csv_path}")
    return rows


def _csv_classes(rows: _CsvRows, csv_path: Path) -> list[str]:
    """Classes named by the CSV itself: 0…max when every label is an index, else the distinct names, sorted."""
    try:
        indices = [int(t) for t in rows.labels]
    except ValueError:
        names = sorted(set(rows.labels))
        check_num_classes(len(names), str(csv_path))
        return names
    check_num_classes(max(indices) + 1, str(csv_path))
    return [str(i) for i in range(max(indices) + 1)]


def _csv_labels(rows: _CsvRows, classes: list[str], csv_path: Path) -> list[int]:
    by_name = {c: i for i, c in enumerate(classes)}
    labels = []
    for text, line in zip(rows.labels, rows.lines):
        if text in by_name:
            labels.append(by_name[text])
            continue
        try:
            label = int(text)
        except ValueError:
            raise ValueError(f"label {text!r} is neither a class index nor a class name at {csv_path}:{line}") \
                from None
        if not 0 <= label < len(classes):
            raise ValueError(f"label {label} out of range [0, {len(classes)}) at {csv_path}:{line}")
        labels.append(label)
    return labels


def _check_disjoint(paths: list[str], lines: list[int] | None, csv_path: Path, other: set[str], folder: str) -> None:
    """A training image may not also be a test or meta image (the CSV can name files in those folders)."""
    for i, p in enumerate(paths):
        if p in other:
            where = f" at {csv_path}:{lines[i]}" if lines is not None else ""
            raise ValueError(f"training image {p}{where} lies in the {folder}/ folder too")


def _read_trusted_csv(trusted_csv: Path, root: Path, paths: list[str]) -> list[bool]:
    """Which training images a trusted-rows file names (first column, optional header)."""
    if not trusted_csv.is_file():
        raise FileNotFoundError(f"trusted CSV not found: {trusted_csv}")
    position = {p: i for i, p in enumerate(paths)}
    marked = [False] * len(paths)
    seen: dict[str, int] = {}
    first = True
    for line, row in _csv_rows(trusted_csv):
        if first and _is_header(row[0], "", root):
            first = False
            continue
        first = False
        rel = _inside(row[0], f"{trusted_csv}:{line}")
        if rel in seen:
            raise ValueError(f"{rel} is listed twice, at {trusted_csv}:{seen[rel]} and line {line}")
        if rel not in position:
            raise ValueError(f"{rel} is not a training image, at {trusted_csv}:{line}")
        seen[rel] = line
        marked[position[rel]] = True
    return marked
