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
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz file"):
        load_dataset(f"arrays:{path}")
    with pytest.raises(FileNotFoundError, match=r"arrays file not found: .*nope\.npz$"):
        load_dataset(f"arrays:{tmp_path / 'nope.npz'}")
