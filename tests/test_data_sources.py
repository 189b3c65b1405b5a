"""Sources by name: scikit-learn's digits, unknown names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_formats import isolate
from mwnet.data import load_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and int(ds.x_train.max()) == 255
    ref = load_digits()
    # Every image is one of sklearn's, scaled 0..16 → 0..255, with its label; train and test are disjoint.
    scaled = np.rint(ref.images * 255 / 16).astype(np.uint8).reshape(len(ref.target), -1)
    lookup = {row.tobytes(): i for i, row in enumerate(scaled)}
    train_ids = [lookup[x.numpy().tobytes()] for x in ds.x_train.reshape(1437, -1)]
    test_ids = [lookup[x.numpy().tobytes()] for x in ds.x_test.reshape(360, -1)]
    assert ref.target[train_ids].tolist() == ds.y_train.tolist()
    assert ref.target[test_ids].tolist() == ds.y_test.tolist()
    assert torch.equal(load_dataset("digits").x_test, ds.x_test)  # the split is fixed


def test_unknown_name():
    with pytest.raises(ValueError, match=r"^unknown data set 'imagenet' \(choose from fashion-mnist, mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"folder: needs a path"):
        load_dataset("folder:")
