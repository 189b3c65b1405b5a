"""CIFAR-10 and CIFAR-100 (fine labels) from the official python pickles, as the extracted folder or the .tar.gz.

The pickles are read by a restricted unpickler (numpy arrays and plain containers only: a file cannot run code,
and nothing it calls can allocate more than the file holds), validated (keys, shapes, label ranges, flat label and
name lists), then checked against the official md5 of each pickle.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import Dataset, check_labels, one_line
from mwnet.data.download import CHECKSUMS, MIRRORS, check_digest, download_dir, fetch, md5_bytes, not_found, search_dirs

# The paper's CIFAR normalisation (docs/algorithm.md, "Official hyper-parameters"), in units of images scaled to [0, 1].
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                            "labels", "label_names", 10),
    "cifar100": _CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta",
                             "fine_labels", "fine_label_names", 100),
}


# The largest official pickle is CIFAR-100's `train` (about 155 MB): anything far larger is not a CIFAR file.
MAX_MEMBER_BYTES = 512 << 20


class _NdarrayType:
    """Stands for numpy.ndarray in a pickle: `_reconstruct` accepts it, and it cannot be called to allocate."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _NdarrayType:
        raise pickle.UnpicklingError("numpy.ndarray called directly (an allocation the file does not hold)")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') and then fills it from the bytes that follow
    # (__setstate__ checks their length), so a larger shape here could only allocate memory the file does not hold.
    if subtype is not _NdarrayType or not isinstance(shape, tuple) or \
            not all(isinstance(s, int) and s >= 0 for s in shape) or math.prod(shape) > 1:
        raise pickle.UnpicklingError(f"numpy _reconstruct with shape {shape!r} is not an array header")
    return np.ndarray.__new__(np.ndarray, shape, np.dtype(dtype))


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); other codecs (hex, base64) grow their input
    # and, nested, could turn a few KB into gigabytes.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin1")


# The only globals an official CIFAR pickle needs (numpy arrays, and bytes as protocol-2 pickles write them).
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                                               ("numpy", "ndarray"): _NdarrayType, ("numpy", "dtype"): np.dtype,
                                               ("_codecs", "encode"): _encode}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a pickle cannot run code on load."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy.core" or module.startswith("numpy.core."):  # the numpy 1.x module names
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return _PICKLE_GLOBALS[module, name]


def unpickle(data: bytes, where: str) -> Any:
    """Load a pickle written by Python 2 or 3 with bytes keys kept as bytes; ValueError naming `where`."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure of a parser fed untrusted bytes is a corrupt file
        raise ValueError(f"corrupt pickle ({type(exc).__name__}: {one_line(exc)}): {where}") from None


def _get(mapping: Any, key: str, where: str) -> Any:
    if isinstance(mapping, dict):
        for k in (key.encode(), key):
            if k in mapping:
                return mapping[k]
    raise ValueError(f"not a CIFAR pickle (no {key.encode()!r} entry): {where}")


def _cifar_batch(entry: Any, layout: _CifarLayout, where: str) -> tuple[np.ndarray, np.ndarray]:
    data = _get(entry, "data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise ValueError(f"CIFAR {b'data'!r} must be uint8 (N, 3072), got {getattr(data, 'dtype', '')} {shape}: "
                         f"{where}")
    labels = _get(entry, layout.label_key, where)
    # A flat list of ints (checked element by element: a list nested by shared references costs the file nothing
    # but would expand exponentially in np.asarray), or a 1-D integer array.
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    elif isinstance(labels, list) and all(type(v) is int for v in labels):
        labels = np.array(labels, dtype=np.int64) if labels else np.zeros(0, dtype=np.int64)
    else:
        raise ValueError(f"CIFAR labels must be a flat list of integers, got {_describe(labels)}: {where}")
    if len(labels) != len(data):
        raise ValueError(f"{len(labels)} labels for {len(data)} images: {where}")
    return data, labels


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    if isinstance(value, list):
        odd = next((v for v in value if type(v) is not int), None)
        return f"a list holding {type(odd).__name__}" if odd is not None else "a list"
    return type(value).__name__


def _member_size(size: int, where: str) -> None:
    if size > MAX_MEMBER_BYTES:
        raise ValueError(f"{size} bytes, more than any CIFAR file ({MAX_MEMBER_BYTES} at most): {where}")


def _cifar_members(name: str, layout: _CifarLayout, location: Path) -> dict[str, tuple[bytes, str]]:
    """member → (bytes, description for messages), from the extracted folder or the archive."""
    wanted = [*layout.train, *layout.test, layout.meta]
    if location.is_dir():
        out = {}
        for member in wanted:
            path = location / member
            if not path.is_file():
                raise FileNotFoundError(f"{name}: missing file {path}")
            _member_size(path.stat().st_size, str(path))
            out[member] = (path.read_bytes(), str(path))
        return out
    names = {f"{layout.folder}/{m}": m for m in wanted}
    out = {}
    try:
        with tarfile.open(location, "r:gz") as tar:
            for info in tar:  # one pass in archive order: no re-decompression for random access
                member = names.get(info.name.lstrip("./"))
                if member is not None and info.isfile():
                    _member_size(info.size, f"{location}:{info.name}")
                    handle = tar.extractfile(info)
                    out[member] = (handle.read() if handle else b"", f"{location}:{info.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt tar.gz archive ({one_line(exc)}): {location}") from None
    for member in wanted:
        if member not in out:
            raise FileNotFoundError(f"{name}: {layout.folder}/{member} missing in archive {location}")
    return out


def _find_cifar(layout: _CifarLayout, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        if (d / layout.folder).is_dir():
            return d / layout.folder
        if (d / layout.archive).is_file():
            return d / layout.archive
    return None


def load_cifar(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
               verify: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the official python pickles (folder or .tar.gz)."""
    layout = CIFAR_LAYOUTS[name]
    dirs = search_dirs(name, data_dir)
    location = _find_cifar(layout, dirs)
    if location is None:
        if not download:
            raise not_found(name, dirs, download)
        location = fetch([base + layout.archive for base in MIRRORS[name]], download_dir(name, data_dir)
                         / layout.archive, CHECKSUMS[name][layout.archive])
    members = _cifar_members(name, layout, location)
    meta_bytes, meta_where = members[layout.meta]
    meta = unpickle(meta_bytes, meta_where)
    raw_names = _get(meta, layout.names_key, meta_where)
    if not isinstance(raw_names, list) or not all(isinstance(n, (bytes, str)) for n in raw_names):
        raise ValueError(f"CIFAR class names must be a list of strings, got {type(raw_names).__name__}: {meta_where}")
    if len(raw_names) != layout.num_classes:
        raise ValueError(f"{len(raw_names)} class names, expected {layout.num_classes}: {meta_where}")
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw_names]
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    for split, member_names in (("train", layout.train), ("test", layout.test)):
        for member in member_names:
            data, where = members[member]
            x, y = _cifar_batch(unpickle(data, where), layout, where)
            check_labels(torch.from_numpy(y), layout.num_classes, where)
            parts[split][0].append(x)
            parts[split][1].append(y)
    if verify:  # after the structural checks, which name a truncated or corrupt file more precisely
        for member, (data, where) in members.items():
            check_digest(md5_bytes(data), CHECKSUMS[name].get(member), where)
    # Each row holds the 1024 red, then green, then blue values of a 32×32 image, row-major: (N, 3, 32, 32).
    x_train, x_test = (torch.from_numpy(np.concatenate(parts[s][0]).reshape(-1, 3, 32, 32)) for s in parts)
    y_train, y_test = (torch.from_numpy(np.concatenate(parts[s][1])) for s in parts)
    return Dataset(name, classes, x_train, y_train, x_test, y_test, CIFAR_MEAN, CIFAR_STD, source=str(location),
                   labels_verified=True)
