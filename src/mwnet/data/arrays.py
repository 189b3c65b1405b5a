"""arrays:PATH: a `.npz` of x, y (and optionally x_test, y_test, x_meta, y_meta, classes)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from mwnet.data.dataset import Dataset, channel_stats, check_labels, holdout_split, one_line


def load_arrays(path: Path) -> Dataset:
    """A `.npz` with `x`, `y` and optionally `x_test`, `y_test`, `x_meta`, `y_meta`, `classes`.

    uint8 (N, C, H, W) or (N, H, W) arrays are images; 2-D arrays are tables (float32); float (N, C, H, W) arrays
    are images used as they are (no scaling, no statistics). Without x_test, a fixed 20 % (seed 0) is held out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"arrays file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a readable .npz file ({one_line(exc)}): {path}") from None
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
        classes = [str(c) for c in arrays["classes"].reshape(-1).tolist()]
    else:
        classes = [str(i) for i in range(max(int(y.max()) if len(y) else -1 for y in ys.values()) + 1)]
    for key, y in ys.items():
        check_labels(y, len(classes), f"{path} [{key}]")
    x, y = xs["x"], ys["y"]
    if "x_test" in xs:
        x_test, y_test = xs["x_test"], ys["y_test"]
    else:
        train_idx, test_idx = holdout_split(len(y))
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    mean, std = channel_stats(x) if x.dtype == torch.uint8 else (None, None)
    return Dataset(f"arrays:{path}", classes, x, y, x_test, y_test, mean, std, xs.get("x_meta"), ys.get("y_meta"),
                   source=str(path))


def _array_inputs(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.dtype == np.uint8 and a.ndim == 3:
        a = a[:, None]
    if a.dtype == np.uint8 and a.ndim == 4:
        return torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim in (2, 4) and (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    raise ValueError(f"{key} must be uint8 images (N, C, H, W) / (N, H, W) or a numeric table (N, D), got "
                     f"{a.dtype} {a.shape}: {path}")


def _array_labels(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.ndim != 1:
        raise ValueError(f"{key} must be 1-D, got shape {a.shape}: {path}")
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{key} must hold integer class labels, got {a.dtype}: {path}")
    return torch.from_numpy(a.astype(np.int64))
