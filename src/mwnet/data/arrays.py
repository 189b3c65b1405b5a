"""arrays:PATH: a `.npz` of x, y (and optionally x_test, y_test, x_meta, y_meta, classes, trusted).

The archive is read member by member: every array's header (shape, dtype) is checked before its data is read, so
a file that declares more bytes than `max_bytes`, holds pickled objects or is truncated is one ValueError.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mwnet.data.dataset import Dataset, channel_stats, check_labels, check_num_classes, holdout_split, one_line

KEYS = ("x", "y", "x_test", "y_test", "x_meta", "y_meta", "classes", "trusted")
_PARSE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, zlib.error, KeyError,
                 NotImplementedError, RuntimeError)  # what zipfile and numpy raise on damaged or odd archives


def default_max_bytes() -> int:
    """Half of this machine's memory (16 GiB where it cannot be read): the most a `.npz` may declare."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return 16 << 30


def load_arrays(path: Path, *, max_bytes: int | None = None) -> Dataset:
    """A `.npz` with `x`, `y` and optionally `x_test`, `y_test`, `x_meta`, `y_meta`, `classes`, `trusted`.

    uint8 (N, C, H, W) or (N, H, W) arrays are images; 2-D arrays are tables (float32); float (N, C, H, W) arrays
    are images used as they are (no scaling, no statistics). Without x_test, a fixed 20 % (seed 0) is held out.
    `x_meta`/`y_meta` is a trusted meta set, used whole; `trusted` (N,) of 0/1 marks rows of x, y whose label was
    verified (a meta set may be carved from those). The labels `y` themselves are not taken as verified.

    Args:
        max_bytes: the most the arrays may declare in all [half this machine's memory].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"arrays file not found: {path}")
    arrays = read_npz(path, default_max_bytes() if max_bytes is None else max_bytes)
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"arrays file lacks {key!r}: {path}")
    for a, b in (("x_test", "y_test"), ("x_meta", "y_meta")):
        if (a in arrays) != (b in arrays):
            raise ValueError(f"arrays file has {a if a in arrays else b!r} without {b if a in arrays else a!r}: {path}")
    xs = {k: _array_inputs(arrays[k], k, path) for k in ("x", "x_test", "x_meta") if k in arrays}
    ys = {k: _array_labels(arrays[k], k, path) for k in ("y", "y_test", "y_meta") if k in arrays}
    for xk, yk in (("x", "y"), ("x_test", "y_test"), ("x_meta", "y_meta")):
        if xk in xs:
            if len(xs[xk]) != len(ys[yk]):
                raise ValueError(f"{xk} has {len(xs[xk])} rows but {yk} has {len(ys[yk])}: {path}")
            if xs[xk].shape[1:] != xs["x"].shape[1:] or xs[xk].dtype != xs["x"].dtype:
                raise ValueError(f"{xk} {tuple(xs[xk].shape)} {xs[xk].dtype} does not match x "
                                 f"{tuple(xs['x'].shape)} {xs['x'].dtype}: {path}")
    if "classes" in arrays:
        names = arrays["classes"].reshape(-1)
        check_num_classes(len(names), f"{path} [classes]")
        classes = [str(c) for c in names.tolist()]
    else:
        classes = [str(i) for i in range(max(int(y.max()) if len(y) else -1 for y in ys.values()) + 1)]
    for key, y in ys.items():
        check_labels(y, len(classes), f"{path} [{key}]")
    trusted = _trusted_rows(arrays["trusted"], len(ys["y"]), path) if "trusted" in arrays else None
    x, y = xs["x"], ys["y"]
    ids = np.arange(len(y), dtype=np.int64)  # each training sample's row in x
    if "x_test" in xs:
        x_test, y_test = xs["x_test"], ys["y_test"]
    else:
        train_idx, test_idx = holdout_split(len(y))
        x, y, x_test, y_test, ids = x[train_idx], y[train_idx], x[test_idx], y[test_idx], ids[train_idx.numpy()]
        trusted = trusted[train_idx] if trusted is not None else None
    mean, std = channel_stats(x) if x.dtype == torch.uint8 else (None, None)
    meta = "x_meta" in xs
    return Dataset(f"arrays:{path}", classes, x, y, x_test, y_test, mean, std, xs.get("x_meta"), ys.get("y_meta"),
                   source=str(path), trusted=trusted, trusted_source=f"rows marked in 'trusted' of {path}",
                   meta_source=f"x_meta in {path}" if meta else "", train_ids=ids,
                   meta_ids=np.arange(len(ys["y_meta"]), dtype=np.int64) if meta else None)


def read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of KEYS in a `.npz` (other members are not read); one-line ValueErrors for anything else."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"a single .npy array, not a .npz archive of x and y (write one with "
                         f"np.savez(file, x=..., y=...)): {path}")
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"not a .npz archive (no zip header): {path}")
    headers: dict[str, tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else None
                if key in KEYS and key not in headers:
                    with archive.open(info) as member:
                        version = np.lib.format.read_magic(member)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, dtype = read(member)
                    headers[key] = (info, shape, dtype)
            for key, (_, _, dtype) in headers.items():
                if dtype.hasobject:
                    raise _Refused(f"{key} holds Python objects ({dtype}), which mwnet never unpickles: {path}")
            declared = sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in headers.values())
            if declared > max_bytes:
                sizes = ", ".join(f"{k} {shape} {dtype}" for k, (_, shape, dtype) in headers.items())
                raise _Refused(f"arrays declare {declared} bytes ({sizes}), more than the {max_bytes}-byte "
                               f"limit: {path}")
            arrays = {}
            for key, (info, _, _) in headers.items():
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except _PARSE_ERRORS as exc:
        raise ValueError(f"not a readable .npz file ({type(exc).__name__}: {one_line(exc)}): {path}") from None
    return arrays


class _Refused(Exception):
    """A well-formed archive whose content is refused (kept apart from the parse errors caught around it)."""


def _array_inputs(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.dtype == np.uint8 and a.ndim == 3:
        a = a[:, None]
    if a.dtype == np.uint8 and a.ndim == 4:
        return torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim in (2, 4) and (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        values = np.ascontiguousarray(a, dtype=np.float32)
        bad = _count_non_finite(values)
        if bad:
            raise ValueError(f"{key} holds {bad} NaN or infinite values (inputs must be finite numbers): {path}")
        return torch.from_numpy(values)
    raise ValueError(f"{key} must be uint8 images (N, C, H, W) / (N, H, W) or a numeric table (N, D), got "
                     f"{a.dtype} {a.shape}: {path}")


def _count_non_finite(values: np.ndarray, rows: int = 4096) -> int:
    """How many entries of `values` are NaN or ±inf, counted a few rows at a time (bounded extra memory)."""
    return sum(int(values[i:i + rows].size - np.count_nonzero(np.isfinite(values[i:i + rows])))
               for i in range(0, len(values), rows))


def _array_labels(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.ndim != 1:
        raise ValueError(f"{key} must be 1-D, got shape {a.shape}: {path}")
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        if len(a) and np.abs(a).max() > 2**53:  # beyond exact integers: a corrupt file, not a label
            raise ValueError(f"{key} holds label {np.abs(a).max():g}, not a class index: {path}")
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{key} must hold integer class labels, got {a.dtype}: {path}")
    labels = torch.from_numpy(a.astype(np.int64))
    if len(labels):
        check_num_classes(int(labels.max()) + 1, f"{path} [{key}]")  # before any list of class names is built
    return labels


def _trusted_rows(a: np.ndarray, n: int, path: Path) -> torch.Tensor:
    if a.shape != (n,) or not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.number)) or \
            not np.isin(a, (0, 1)).all():
        raise ValueError(f"trusted must be {n} values of 0/1 (one per row of x), got {a.dtype} {a.shape}: {path}")
    return torch.from_numpy(a.astype(bool))
