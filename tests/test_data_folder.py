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


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height pixels and holds none (a decompression bomb costs its author nothing)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_folder_images_subfolder_with_a_csv_is_not_one_class(tmp_path):
    """Issue 10.12: PATH/images/… + noisy_labels.csv: the classes are the CSV's, and its labels are unverified."""
    from mwnet.data import UnverifiedMetaSetError, make_split

    write_folder(tmp_path / "images", {"": 0})
    write_folder(tmp_path, {"images": 12}, mode="L")
    rows = [f"images/{i:03d}.png,{i % 3}" for i in range(12)]
    (tmp_path / "noisy_labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ["0", "1", "2"] and ds.y_train_true is None and not ds.labels_verified
    assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == sorted(i % 3 for i in range(12))
    with pytest.raises(UnverifiedMetaSetError, match=r"has no trusted meta set"):
        make_split(ds, meta_per_class=1)
    assert make_split(ds, meta_per_class=1, meta_from_unverified=True).meta_source == \
        "carved from unverified labels (accepted)"
    names = ["cat", "dog", "cat"] * 4
    (tmp_path / "noisy_labels.csv").write_text("image,class\n" + "".join(
        f"images/{i:03d}.png,{n}\n" for i, n in enumerate(names)))
    assert load_dataset(f"folder:{tmp_path}").classes == ["cat", "dog"]


def test_folder_class_folders_beside_a_csv_are_the_truth_the_meta_set_is_carved_from(tmp_path):
    from mwnet.data import make_split

    write_folder(tmp_path / "train", {"a": 10, "b": 10})
    rows = [f"train/{c}/{i:03d}.png,{'b' if i < 4 else c}" for c in "ab" for i in range(10)]
    labels = tmp_path / "elsewhere" / "my_labels.csv"  # an explicit CSV path
    labels.parent.mkdir()
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset(f"folder:{tmp_path}", labels_csv=labels)
    split = make_split(ds, meta_per_class=2, seed=0)
    assert split.meta_source.startswith("carved from the images whose CSV label agrees with their class folder")
    assert all(p.split("/")[1] == ds.classes[int(y)] for p, y in zip(split.meta_source_ids, split.y_meta))


def test_folder_trusted_column_and_trusted_file(tmp_path):
    """Issue 10.1: trusted labels named by a CSV column or by a file of rows; the meta set comes from those only."""
    from mwnet.data import make_split

    write_folder(tmp_path / "images", {"x": 20}, mode="L")
    rows = [f"images/x/{i:03d}.png,{i % 2},{int(i < 8)}" for i in range(20)]
    (tmp_path / "noisy_labels.csv").write_text("path,label,trusted\n" + "\n".join(rows) + "\n")
    write_folder(tmp_path / "test", {"0": 2, "1": 2}, mode="L", seed=3)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.trusted.tolist() == [i < 8 for i in range(20)]
    split = make_split(ds, meta_per_class=4, seed=0)
    assert sorted(split.meta_source_ids.tolist()) == [f"images/x/{i:03d}.png" for i in range(8)]
    assert split.meta_source == f"carved from the trusted column of {tmp_path / 'noisy_labels.csv'}"
    (tmp_path / "noisy_labels.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    (tmp_path / "verified.csv").write_text("path\nimages/x/019.png\nimages/x/018.png\n")
    ds = load_dataset(f"folder:{tmp_path}", trusted_csv=tmp_path / "verified.csv")
    split = make_split(ds, meta_per_class=1, seed=0)
    assert sorted(split.meta_source_ids.tolist()) == ["images/x/018.png", "images/x/019.png"]
    assert split.meta_source == f"carved from the rows named in {tmp_path / 'verified.csv'}"
    (tmp_path / "verified.csv").write_text("images/x/019.png\nimages/x/404.png\n")
    with pytest.raises(ValueError, match=r"^images/x/404\.png is not a training image, at .*verified\.csv:2$"):
        load_dataset(f"folder:{tmp_path}", trusted_csv=tmp_path / "verified.csv")


@pytest.mark.parametrize("listed", ["../outside/secret.png", "/etc/passwd", "a/../../outside/secret.png", ".."])
def test_folder_csv_paths_stay_inside_the_folder(tmp_path, listed):
    """Issue 15.13: a CSV row may not reach outside the data set folder."""
    write_folder(tmp_path / "outside", {"": 0})
    write_folder(tmp_path / "outside", {".": 1})
    (tmp_path / "outside" / "000.png").rename(tmp_path / "outside" / "secret.png")
    write_folder(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "d" / "noisy_labels.csv").write_text(f"a/000.png,0\n{listed},1\nb/000.png,1\n")
    with pytest.raises(ValueError, match=rf"^path '{listed}' is not inside the data set folder .* at "
                                         rf".*noisy_labels\.csv:2$"):
        load_dataset(f"folder:{tmp_path / 'd'}")


@pytest.mark.parametrize("rows, message", [
    ("a/000.png,0\nb/000.png,1\na/000.png,1\n", r"^a/000\.png is listed twice, at .*noisy_labels\.csv:1 and line 3$"),
    ("a/000.png,0\nb/./000.png,1\nb/000.png,1\n", r"^b/000\.png is listed twice, at .*noisy_labels\.csv:2 and line 3$"),
    ("a/000.png,0\ntest/a/000.png,0\n", r"^training image test/a/000\.png at .*noisy_labels\.csv:2 lies in the test/ "
                                        r"folder too$"),
    ("a/000.png,0\nb/000.png,\"" + "1" * 200_000 + "\"\n", r"^malformed CSV \(field larger than field limit .*\) at "
                                                         r".*noisy_labels\.csv:2$"),
    ("a/000.png,0\nb/000.png,1,zzz\n", None),  # an extra column without a header naming it is ignored
])
def test_folder_duplicate_conflicting_and_malformed_rows(tmp_path, rows, message):
    """Issue 15.13: one image in two rows, or in train and test, is refused naming the rows."""
    write_folder(tmp_path, {"a": 2, "b": 2})
    write_folder(tmp_path / "test", {"a": 1, "b": 1}, seed=1)
    (tmp_path / "noisy_labels.csv").write_text(rows)
    if message is None:
        assert len(load_dataset(f"folder:{tmp_path}").y_train) == 2
        return
    with pytest.raises(ValueError, match=message):
        load_dataset(f"folder:{tmp_path}")


def test_folder_class_count_and_image_size_are_bounded(tmp_path):
    """Issue 15.12: a label of 10⁶ or a 30000 × 30000 PNG of a few bytes is one line, not an out-of-memory kill."""
    write_folder(tmp_path / "d", {"images": 2})
    (tmp_path / "d" / "noisy_labels.csv").write_text("images/000.png,0\nimages/001.png,1000000\n")
    with pytest.raises(ValueError, match=r"^1000001 classes \(labels up to 1000000\), more than the 100000 mwnet "
                                         r"supports: .*noisy_labels\.csv$"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    write_folder(tmp_path / "e", {"a": 2, "b": 2})
    (tmp_path / "e" / "b" / "001.png").write_bytes(png_header(9000, 9000))  # decoded after the first set the size
    with pytest.raises(ValueError, match=r"^image is 9000x9000 = 81000000 pixels, more than the 67108864 allowed: "
                                         r".*b/001\.png$"):
        load_dataset(f"folder:{tmp_path / 'e'}")
    for name in ("b/001.png", "a/000.png"):  # the first image is read for the geometry, the others decoded
        (tmp_path / "e" / name).write_bytes(png_header(30000, 30000))  # beyond Pillow's own bomb limit
        with pytest.raises(ValueError, match=r"^image too large \(.*decompression bomb.*\): .*" + name):
            load_dataset(f"folder:{tmp_path / 'e'}")
    write_folder(tmp_path / "g", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"^image_size must be a positive int or \(H, W\) of at most 67108864 pixels"):
        load_dataset(f"folder:{tmp_path / 'g'}", image_size=100_000)
    write_folder(tmp_path / "f", {"images": 2})
    with pytest.raises(ValueError, match=r"^only one class sub-folder \('images'\) and no labels CSV"):
        load_dataset(f"folder:{tmp_path / 'f'}")


def test_folder_load_warns_nothing(tmp_path):
    """Issue 10.12: no UserWarning about non-writable NumPy arrays on every folder load."""
    import warnings

    from mwnet.data import images

    write_folder(tmp_path, {"a": 2, "b": 2}, mode="L")
    # torch warns once per process, so the warning itself shows only in the first load: check its cause too.
    assert images.decode(str(tmp_path / "a" / "000.png"), (6, 5), "L").flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(f"folder:{tmp_path}")
        lazy = load_dataset(f"folder:{tmp_path}", max_memory_bytes=1)
        assert torch.equal(lazy.x_train[torch.arange(len(lazy.x_train))], ds.x_train)


def test_folder_source_ids_are_paths_relative_to_the_folder(tmp_path):
    """Issue 10.3: each training sample maps back to its file, after the held-out test split and the meta set."""
    from mwnet.data import make_split

    images = write_folder(tmp_path, {"a": 6, "b": 6})
    split = make_split(load_dataset(f"folder:{tmp_path}"), meta_per_class=1, meta_from_unverified=True, seed=0)
    assert len(split.source_ids) == len(split.y_train) == 12 - 3 - 2  # 20 % held out, then 2 meta
    for i, rel in enumerate(split.source_ids):
        assert torch.equal(split.x_train[i], torch.from_numpy(images[str(tmp_path / rel)].transpose(2, 0, 1)))
    assert set(split.source_ids).isdisjoint(split.meta_source_ids)
