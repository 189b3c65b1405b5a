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


def test_builtin_labels_are_clean_and_samples_map_back_to_the_source():
    """Issue 10: a built-in data set's meta set comes from its clean labels, and says so; every training sample
    maps back to its row in scikit-learn's digits (issue 10.3)."""
    from sklearn.datasets import load_digits

    from mwnet.data import make_split

    split = make_split(load_dataset("digits"), noise="uniform:0.5", num_meta=50, seed=0)
    assert split.meta_source == "carved from the clean training set"
    ref = load_digits()
    scaled = np.rint(ref.images * 255 / 16).astype(np.uint8)[:, None]
    assert np.array_equal(scaled[split.source_ids], split.x_train.numpy())
    assert np.array_equal(ref.target[split.source_ids], split.y_true.numpy())
    assert np.array_equal(ref.target[split.meta_source_ids], split.y_meta.numpy())


def test_unknown_name():
    with pytest.raises(ValueError, match=r"^unknown data set 'imagenet' \(choose from fashion-mnist, mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"folder: needs a path"):
        load_dataset("folder:")
