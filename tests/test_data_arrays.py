"""`.npz` array sources: tables and images, held-out test split, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_formats import isolate
from mwnet.data import load_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_arrays(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=g.normal(size=(50, 6)), y=g.integers(0, 3, 50), x_meta=g.normal(size=(9, 6)),
             y_meta=np.repeat(np.arange(3), 3))
    ds = load_dataset(f"arrays:{path}")
    assert ds.x_train.dtype == torch.float32 and ds.input_shape == (6,) and ds.mean is None
    assert len(ds.y_train) == 40 and len(ds.y_test) == 10 and ds.num_classes == 3
    assert ds.y_meta.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    images = g.integers(0, 256, (20, 5, 5), dtype=np.uint8)
    np.savez(path, x=images, y=np.arange(20) % 4, x_test=images[:4], y_test=np.arange(4))
    ds = load_dataset(f"arrays:{path}")
    assert ds.x_train.shape == (20, 1, 5, 5) and ds.x_train.dtype == torch.uint8 and ds.mean is not None
    np.savez(path, x=images, y=np.arange(20) - 1)
    with pytest.raises(ValueError, match=r"label -1 out of range \[0, 19\): .*d\.npz \[y\]$"):
        load_dataset(f"arrays:{path}")
    np.savez(path, x=images)
    with pytest.raises(ValueError, match=r"arrays file lacks 'y': .*d\.npz$"):
        load_dataset(f"arrays:{path}")
    np.savez(path, x=images, y=np.arange(19))
    with pytest.raises(ValueError, match=r"x has 20 rows but y has 19"):
        load_dataset(f"arrays:{path}")
    with pytest.raises(FileNotFoundError, match=r"arrays file not found: .*nope\.npz$"):
        load_dataset(f"arrays:{tmp_path / 'nope.npz'}")


def _write_npy_member(path, arrays_with_headers):
    """A .npz whose members are raw .npy bytes (so that a header can declare what the data does not hold)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for key, data in arrays_with_headers.items():
            archive.writestr(f"{key}.npy", data)


def _npy_header(shape, dtype="|u1") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _good_npz(path):
    np.savez(path, x=np.zeros((10, 3)), y=np.arange(10) % 2)
    return path.read_bytes()


@pytest.mark.parametrize("write, message", [
    # Issue 15.12: each of these ended in an OOM kill, BadZipFile, TypeError or MemoryError.
    (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0, 1, 10**9])),
     r"^1000000001 classes \(labels up to 1000000000\), more than the 100000 mwnet supports: .*d\.npz \[y\]$"),
    (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0, 1, 2]), classes=np.array(["a"] * 100_001)),
     r"^100001 classes .*more than the 100000 mwnet supports: .*d\.npz \[classes\]$"),
    (lambda p: p.write_bytes(_good_npz(p)[:300]), r"^not a readable \.npz file \(BadZipFile: .*\): .*d\.npz$"),
    (lambda p: np.save(p.with_suffix(".npz.npy"), np.zeros(3)) or p.write_bytes(p.with_suffix(".npz.npy").read_bytes()),
     r"^a single \.npy array, not a \.npz archive of x and y .*: .*d\.npz$"),
    (lambda p: p.write_bytes(b"not a zip"), r"^not a \.npz archive \(no zip header\): .*d\.npz$"),
    (lambda p: _write_npy_member(p, {"x": _npy_header((2**40, 1)), "y": _npy_header((2**40,))}),
     r"^arrays declare 2199023255552 bytes \(x \(1099511627776, 1\) uint8, y \(1099511627776,\) uint8\), more than "
     r"the \d+-byte limit: .*d\.npz$"),
    (lambda p: _write_npy_member(p, {"x": _npy_header((4, 1)) + b"\0" * 4, "y": _npy_header((4,), "|O")}),
     r"^y holds Python objects \(object\), which mwnet never unpickles: .*d\.npz$"),
    (lambda p: _write_npy_member(p, {"x": _npy_header((4, 1)) + b"\0" * 2, "y": _npy_header((4,)) + b"\0" * 4}),
     r"^not a readable \.npz file \(ValueError: EOF: reading array data.*\): .*d\.npz$"),
    (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.array([0.0, 1.0, 1e300])),
     r"^y holds label 1e\+300, not a class index: .*d\.npz$"),
    (lambda p: np.savez(p, x=np.zeros((3, 2)), y=np.arange(3), trusted=np.array([1, 2, 0])),
     r"^trusted must be 3 values of 0/1 \(one per row of x\), got int64 \(3,\): .*d\.npz$"),
])
def test_arrays_hostile_files_are_one_line_value_errors(tmp_path, write, message):
    path = tmp_path / "d.npz"
    write(path)
    with pytest.raises(ValueError, match=message):
        load_dataset(f"arrays:{path}")


def test_arrays_meta_set_sources_and_source_ids(tmp_path):
    """Issue 10.1/10.3: y is unverified; x_meta or a `trusted` array say where clean labels are; every training
    sample maps back to its row in x, across the held-out test split and the meta set."""
    from mwnet.data import UnverifiedMetaSetError, make_split

    g = np.random.default_rng(1)
    x, y = g.normal(size=(200, 4)), np.arange(200) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(f"arrays:{path}")
    with pytest.raises(UnverifiedMetaSetError, match=rf"^arrays:{path} has no trusted meta set"):
        make_split(ds, meta_per_class=5)
    split = make_split(ds, meta_per_class=5, meta_from_unverified=True, seed=3)
    assert split.meta_source == "carved from unverified labels (accepted)"
    np.testing.assert_array_equal(x[split.source_ids].astype(np.float32), split.x_train.numpy())
    np.testing.assert_array_equal(x[split.meta_source_ids].astype(np.float32), split.x_meta.numpy())
    assert len(set(split.source_ids) | set(split.meta_source_ids)) == 160  # disjoint; 40 rows held out for test

    trusted = np.zeros(200, dtype=bool)
    trusted[::5] = True
    np.savez(path, x=x, y=y, trusted=trusted)
    split = make_split(load_dataset(f"arrays:{path}"), meta_per_class=3, seed=0)
    assert trusted[split.meta_source_ids].all()
    assert split.meta_source == f"carved from rows marked in 'trusted' of {path}"

    np.savez(path, x=x, y=y, x_meta=x[:50], y_meta=y[:50])
    split = make_split(load_dataset(f"arrays:{path}"), meta_per_class=10, seed=0)  # a default must not shrink it
    assert len(split.y_meta) == 50 and split.meta_source == f"x_meta in {path} (all 50)"
