"""Fashion-MNIST and MNIST from the four official IDX files (gzipped or not), each checked against its official md5
after its structure (magic number, header, length, label range) has been validated.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mwnet.data.dataset import Dataset, channel_stats, check_labels, one_line
from mwnet.data.download import CHECKSUMS, MIRRORS, check_digest, download_dir, fetch, md5_bytes, not_found, search_dirs

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# The largest official IDX file (MNIST's training images) is 47 MB: a file far larger is not one, and a few KB of
# gzip could otherwise decompress to gigabytes.
MAX_FILE_BYTES = 256 << 20


def read_file_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip data (by its magic bytes, not its name); at most
    MAX_FILE_BYTES either way."""
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes, more than any IDX file ({MAX_FILE_BYTES} at most): {path}")
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            out = handle.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt gzip file ({one_line(exc)}): {path}") from None
    if len(out) > MAX_FILE_BYTES:
        raise ValueError(f"gzip data decompresses to more than any IDX file ({MAX_FILE_BYTES} bytes): {path}")
    return out


def parse_idx(data: bytes, where: str | Path) -> np.ndarray:
    """Decode an IDX file's bytes (big-endian header: 0, 0, type code, number of dimensions, then the sizes)."""
    if len(data) < 4:
        raise ValueError(f"not an IDX file ({len(data)} bytes): {where}")
    magic = int.from_bytes(data[:4], "big")
    dtype = _IDX_DTYPES.get(data[2])
    if data[0] != 0 or data[1] != 0 or dtype is None or data[3] == 0:
        raise ValueError(f"not an IDX file (bad magic 0x{magic:08x}): {where}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"truncated IDX file (header needs {header} bytes, got {len(data)}): {where}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "over-long"
        raise ValueError(f"{what} IDX file (expected {expected} bytes for shape {shape}, got {len(data)}): {where}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
                     verify: bool = True) -> Dataset:
    """Fashion-MNIST or MNIST from the four official IDX files (gzipped or not)."""
    dirs = search_dirs(name, data_dir)
    found = next((d for d in dirs if all(_idx_file(d, f) for f in IDX_FILES)), None)
    if found is None:
        partial = next((d for d in dirs if any(_idx_file(d, f) for f in IDX_FILES)), None)
        if download:
            found = download_dir(name, data_dir)
            for f in IDX_FILES:
                if _idx_file(found, f) is None:
                    fetch([base + f"{f}.gz" for base in MIRRORS[name]], found / f"{f}.gz",
                          CHECKSUMS[name][f"{f}.gz"])
        elif partial is not None:
            missing = next(f for f in IDX_FILES if _idx_file(partial, f) is None)
            raise FileNotFoundError(f"{name}: {missing}.gz missing in {partial}")
        else:
            raise not_found(name, dirs, download)
    arrays, digests = {}, {}
    for f in IDX_FILES:
        path = _idx_file(found, f)
        if path is None:  # pragma: no cover - guarded above
            raise FileNotFoundError(f"{name}: {f}.gz missing in {found}")
        data = read_file_bytes(path)
        arrays[f] = parse_idx(data, path)
        digests[str(path)] = (md5_bytes(data), CHECKSUMS[name].get(f))
    x_train = _idx_images(arrays["train-images-idx3-ubyte"], _idx_file(found, "train-images-idx3-ubyte"))
    x_test = _idx_images(arrays["t10k-images-idx3-ubyte"], _idx_file(found, "t10k-images-idx3-ubyte"))
    y_train = _idx_labels(arrays["train-labels-idx1-ubyte"], len(x_train), _idx_file(found, "train-labels-idx1-ubyte"))
    y_test = _idx_labels(arrays["t10k-labels-idx1-ubyte"], len(x_test), _idx_file(found, "t10k-labels-idx1-ubyte"))
    if verify:  # after the structural checks, which name a truncated or corrupt file more precisely
        for where, (got, expected) in digests.items():
            check_digest(got, expected, where)
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    mean, std = channel_stats(x_train)
    return Dataset(name, list(classes), x_train, y_train, x_test, y_test, mean, std, source=str(found),
                   labels_verified=True)


def _idx_images(array: np.ndarray, path: Path | None) -> torch.Tensor:
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W), got {array.dtype} {array.shape}: {path}")
    return torch.from_numpy(array).unsqueeze(1)


def _idx_labels(array: np.ndarray, count: int, path: Path | None) -> torch.Tensor:
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D label file, got shape {array.shape}: {path}")
    if len(array) != count:
        raise ValueError(f"{len(array)} labels for {count} images: {path}")
    labels = torch.from_numpy(array.astype(np.int64))
    check_labels(labels, 10, str(path))
    return labels
