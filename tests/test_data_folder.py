"""Image-folder sources: in-memory and lazy loading agree, the noisy-labels CSV, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_formats import isolate
from mwnet.data import LazyImages, dataset, load_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def write_folder(root: Path, counts: dict[str, int], size=(6, 5), mode="RGB", seed=0) -> dict[str, np.ndarray]:
    from PIL import Image

    g = np.random.default_rng(seed)
    images = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            array = g.integers(0, 256, shape, dtype=np.uint8)
            path = root / cls / f"{i:03d}.png"
            Image.fromarray(array, mode=None).save(path)
            images[str(path)] = array
    return images


def test_folder_in_memory_and_lazy_agree(tmp_path):
    images = write_folder(tmp_path / "train", {"cat": 6, "dog": 4})
    write_folder(tmp_path / "test", {"cat": 2, "dog": 2}, seed=1)
    write_folder(tmp_path / "meta", {"cat": 1, "dog": 1}, seed=2)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ["cat", "dog"] and ds.x_train.shape == (10, 3, 6, 5)
    assert ds.y_train.tolist() == [0] * 6 + [1] * 4 and len(ds.y_test) == 4 and ds.y_meta.tolist() == [0, 1]
    first = images[str(tmp_path / "train" / "cat" / "000.png")]
    assert torch.equal(ds.x_train[0], torch.from_numpy(first.transpose(2, 0, 1)))
    lazy = load_dataset(f"folder:{tmp_path}", max_memory_bytes=100)
    assert isinstance(lazy.x_train, LazyImages) and lazy.x_train.shape == ds.x_train.shape
    idx = torch.tensor([9, 0, 4])
    assert torch.equal(lazy.x_train[idx], ds.x_train[idx])
    assert torch.equal(lazy.x_train.subset(idx)[torch.tensor([1])], ds.x_train[[0]])
    assert lazy.mean == pytest.approx(ds.mean)
    resized = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert resized.x_train.shape == (10, 3, 4, 4)


def test_folder_noisy_csv_keeps_the_folder_truth_and_holds_out_a_test_set(tmp_path):
    write_folder(tmp_path, {"a": 5, "b": 5}, mode="L")
    rows = ["path,label"] + [f"{c}/{i:03d}.png,{'b' if (c == 'a' and i < 2) else c}" for c in "ab" for i in range(5)]
    (tmp_path / "noisy_labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.input_shape == (1, 6, 5) and ds.classes == ["a", "b"]
    train_idx, test_idx = dataset.holdout_split(10)  # rows in CSV order; 20 % held out with seed 0
    truth = torch.tensor([0] * 5 + [1] * 5)
    given = torch.tensor([1, 1, 0, 0, 0] + [1] * 5)
    assert torch.equal(ds.y_train, given[train_idx]) and torch.equal(ds.y_train_true, truth[train_idx])
    assert torch.equal(ds.y_test, truth[test_idx])  # the held-out test set is labelled by its folders


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nope$"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no class sub-folders .*empty$"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    write_folder(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "d" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png$"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    (tmp_path / "d" / "b" / "broken.png").unlink()
    (tmp_path / "d" / "noisy_labels.csv").write_text("a/000.png,0\nb/000.png,7\n")
    with pytest.raises(ValueError, match=r"label 7 out of range \[0, 2\) at .*noisy_labels\.csv:2$"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    (tmp_path / "d" / "noisy_labels.csv").write_text("a/000.png,0\nb/zzz.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*zzz\.png$"):
        load_dataset(f"folder:{tmp_path / 'd'}")
