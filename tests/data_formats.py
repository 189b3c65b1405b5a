"""The official data formats, written by the data tests, and an offline, cache-free place to load them in."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mwnet.data import cifar, download

_REAL_URLOPEN = urllib.request.urlopen


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real cache, no system copy, no network (file:// URLs still work)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MWNET_DATA", raising=False)
    monkeypatch.setattr(download, "SYSTEM_DIRS", {})

    def offline(url, *args, **kwargs):
        if str(url).startswith("file:"):
            return _REAL_URLOPEN(url, *args, **kwargs)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0, 0, type 0x08 (ubyte), ndim, big-endian uint32 sizes, then the bytes."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_idx_set(seed: int = 0, n_train: int = 50, n_test: int = 20):
    g = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": g.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": g.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": g.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": g.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_set(directory: Path, arrays: dict, *, compress: bool = True) -> dict[str, str]:
    """Write the four files; returns the checksum table (archive and payload md5s) for them."""
    directory.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, array in arrays.items():
        payload = idx_bytes(array)
        table[name] = md5(payload)
        if compress:
            packed = gzip.compress(payload, mtime=0)
            (directory / f"{name}.gz").write_bytes(packed)
            table[f"{name}.gz"] = md5(packed)
        else:
            (directory / name).write_bytes(payload)
    return table


def cifar_dicts(name: str, seed: int = 0, per_batch: int = 12):
    """{member: dict} in the official layout (bytes keys, b'data' uint8 (N, 3072) as R, G, B planes)."""
    g = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    layout = cifar.CIFAR_LAYOUTS[name]
    members = {}
    for member in (*layout.train, *layout.test):
        data = g.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in g.integers(0, k, per_batch)]
        entry = {b"batch_label": f"{member} of 5".encode(), label_key: labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        if name == "cifar100":
            entry[b"coarse_labels"] = [v // 5 for v in labels]
        members[member] = entry
    if name == "cifar10":
        members["batches.meta"] = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                                   b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        members["meta"] = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}
    return members


def write_cifar(root: Path, name: str, *, archive: bool, seed: int = 0) -> tuple[dict, dict[str, str]]:
    layout = cifar.CIFAR_LAYOUTS[name]
    dicts = cifar_dicts(name, seed)
    blobs = {m: pickle.dumps(d, protocol=2) for m, d in dicts.items()}
    table = {m: md5(b) for m, b in blobs.items()}
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for member, blob in blobs.items():
                info = tarfile.TarInfo(f"{layout.folder}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        (root / layout.archive).write_bytes(buffer.getvalue())
        table[layout.archive] = md5(buffer.getvalue())
    else:
        folder = root / layout.folder
        folder.mkdir()
        for member, blob in blobs.items():
            (folder / member).write_bytes(blob)
    return dicts, table
